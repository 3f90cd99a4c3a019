"""Times the frames and clips Grain loaders on a small temporary dataset; prints one JSON object.

    .venv/bin/python bench/bench_pipeline.py [--height 64 --width 128 --batch 64 --seconds 6]

Writes `--frames` frames and `--clips` clips (15..25 frames each) of blocky synthetic content to
a temporary folder, then for each loader and each `--worker-counts` entry reads batches for
about `--seconds` after one warm-up batch and reports examples/s (clips/s for the clips loader;
`frames_per_s` counts the real, unpadded frames).
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ganime_jax.data import pipeline, tfds_io  # noqa: E402

# Clip lengths of the original GANime data (15..25 frames).
MIN_CLIP_FRAMES, MAX_CLIP_FRAMES = 15, 25
# Synthetic frames: flat random blocks of BLOCK pixels a side (like anime colour regions) plus
# noise of NOISE levels (like decoded-video artefacts), so they compress neither perfectly nor
# not at all.
BLOCK = 8
NOISE = 8


def _frame(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    height, width, channels = shape
    blocks = rng.integers(0, 256 - NOISE, (-(-height // BLOCK), -(-width // BLOCK), channels))
    flat = np.repeat(np.repeat(blocks, BLOCK, 0), BLOCK, 1)[:height, :width]
    return (flat + rng.integers(0, NOISE, shape)).astype(np.uint8)


def _frame_examples(count: int, shape: tuple[int, int, int]):
    rng = np.random.default_rng(0)
    for index in range(count):
        yield {"frame": _frame(rng, shape), "source": "bench", "shot_index": index // 100,
               "frame_index": index}


def _clip_examples(count: int, shape: tuple[int, int, int]):
    rng = np.random.default_rng(1)
    for index in range(count):
        length = int(rng.integers(MIN_CLIP_FRAMES, MAX_CLIP_FRAMES + 1))
        frames = np.stack([_frame(rng, shape) for _ in range(length)])
        yield {"frames": frames, "n_frames": length, "source": "bench", "shot_index": index,
               "clip_index": 0}


def _rate(loader, seconds: float) -> dict[str, float]:
    iterator = iter(loader)
    start = time.perf_counter()
    next(iterator)
    first_s = time.perf_counter() - start
    examples = frames = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = next(iterator)
        examples += batch["frames"].shape[0]
        frames += int(batch["n_frames"].sum()) if "n_frames" in batch else batch["frames"].shape[0]
    elapsed = time.perf_counter() - start
    return {"examples_per_s": round(examples / elapsed, 1), "frames_per_s": round(frames / elapsed, 1),
            "first_batch_s": round(first_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--clips", type=int, default=150)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max-frames", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--worker-counts", default="0,2")
    args = parser.parse_args()
    shape = (args.height, args.width, 3)
    result = {"frame_shape": list(shape), "batch": args.batch, "max_frames": args.max_frames,
              "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        tfds_io.write_dataset(root, "frames", "frames",
                              {"train": _frame_examples(args.frames, shape)}, shape)
        tfds_io.write_dataset(root, "clips", "clips", {"train": _clip_examples(args.clips, shape)},
                              shape)
        result["write_s"] = round(time.perf_counter() - start, 2)
        result["stored_mb"] = round(sum(
            os.path.getsize(os.path.join(folder, name))
            for folder, _, names in os.walk(root) for name in names) / 1e6, 1)
        for workers in (int(count) for count in args.worker_counts.split(",")):
            options = pipeline.LoaderOptions(seed=0, worker_count=workers, shard_index=0,
                                             shard_count=1)
            frames = pipeline.frames_loader(root, "frames", "train", global_batch_size=args.batch,
                                            options=options)
            clips = pipeline.clips_loader(root, "clips", "train", global_batch_size=args.batch,
                                          max_frames=args.max_frames, min_frames=MIN_CLIP_FRAMES,
                                          options=options)
            result[f"frames_loader_workers{workers}"] = _rate(frames, args.seconds)
            result[f"clips_loader_workers{workers}"] = _rate(clips, args.seconds)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
