"""Throughput of data_prep.episodes on 5 minutes of rendered synthetic episodes; prints JSON.

The 5 minutes (24 fps, 64x128: 7200 frames) are rendered as two 2.5-minute episode files, so
that both workers have a file and the train/test split by file has one file per split. Shot
detection precision/recall against the true cuts (+-1 frame) is measured separately, outside
the timed run.

    python -m bench.bench_data_prep [--minutes 5] [--workers 2]
"""
import argparse
import json
import os
import tempfile
import time

from data_prep import episodes
from data_prep.render_episodes import episode_seed, render_episode_file
from ganime_jax.data.staged_clips import ClipSettings
from ganime_jax.data.shot_detection import detect_shots
from ganime_jax.data.synthetic_anime import SyntheticAnimeConfig

FPS = 24.0
NUM_FILES = 2
CUT_TOLERANCE = 1  # frames


def _cut_matches(found: list[int], true: list[int]) -> tuple[int, int]:
    """(found cuts near a true cut, true cuts near a found cut)."""
    correct = sum(any(abs(f - t) <= CUT_TOLERANCE for t in true) for f in found)
    hits = sum(any(abs(f - t) <= CUT_TOLERANCE for f in found) for t in true)
    return correct, hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    config = SyntheticAnimeConfig(height=64, width=128)
    frames_per_file = round(args.minutes * 60 * FPS / NUM_FILES)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [os.path.join(tmp, f"episode{i}.mp4") for i in range(NUM_FILES)]
        start = time.perf_counter()
        true_cuts = [render_episode_file(p, episode_seed(0, i), frames_per_file, config, FPS)
                     for i, p in enumerate(paths)]
        render_s = time.perf_counter() - start

        settings = episodes.PrepSettings(clip=ClipSettings(), test_fraction=0.5, workers=args.workers)
        start = time.perf_counter()
        summary = episodes.prepare_episodes([os.path.join(tmp, "*.mp4")], os.path.join(tmp, "data"), "bench",
                                            settings)
        prep_s = time.perf_counter() - start

        found_cuts = [[s for s, _ in detect_shots(p)[1:]] for p in paths]
    correct, hits = map(sum, zip(*(_cut_matches(f, t) for f, t in zip(found_cuts, true_cuts))))
    num_found, num_true = sum(map(len, found_cuts)), sum(map(len, true_cuts))
    frames = summary.counts["frames_read"]
    print(json.dumps({
        "benchmark": "data_prep_episodes",
        "video_minutes": args.minutes,
        "files": NUM_FILES,
        "frame_size": [config.height, config.width],
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "render_and_encode_s": round(render_s, 2),
        "data_prep_s": round(prep_s, 2),
        "frames_read": frames,
        "frames_per_s": round(frames / prep_s, 1),
        "true_cuts": num_true,
        "cuts_found": num_found,
        "cut_precision": round(correct / max(num_found, 1), 4),
        "cut_recall": round(hits / max(num_true, 1), 4),
        "shots": summary.counts["shots"],
        "clips": summary.counts["clips"],
        "clip_frames": summary.counts["clip_frames"],
        "frames_held": summary.counts["frames_held"],
        "frames_leftover": summary.counts["frames_leftover"],
    }))


if __name__ == "__main__":
    main()
