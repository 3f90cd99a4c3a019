"""A bundle's generated in-betweens above the true clips, for the first held-out clips: a PNG.

    python -m ganime_jax.evaluation.clip_strip --bundle=DIR --out=strip.png \
        [--num_clips=4] [--every=1] [--seed=0]

Each clip takes two rows: on top the frames the bundle's model generated from the clip's first
and last frame (with the bundle's sampling settings, as `--mode=eval` draws them for `--seed`),
below them the true frames; columns are frame positions (every `--every`-th, the last always
kept). The clips are the first held-out clips that are long enough for the bundle's
`config.evaluate.num_frames`; the embedded test set is built if it is missing, as for eval.
"""
import argparse
import pathlib
import sys
from collections.abc import Sequence

import numpy as np
from PIL import Image

from ganime_jax import bundle, sample
from ganime_jax.errors import UserError, exit_on_user_error
from ganime_jax.evaluation import run as eval_run
from ganime_jax.evaluation.report import atomic_write

GAP = 4  # pixels of white between frames, and twice that between clips


def strip_image(generated: np.ndarray, truth: np.ndarray, every: int) -> np.ndarray:
    """uint8 (H', W', 3): for each clip of (N, T, H, W, 3) `generated` and `truth`, a row of
    its generated frames above a row of its true ones, at positions 0, every, ..., T-1."""
    num_frames = truth.shape[1]
    positions = sorted(set(range(0, num_frames, every)) | {num_frames - 1})
    height, width = truth.shape[2:4]
    rows = []
    for clip in range(len(truth)):
        for frames in (generated[clip], truth[clip]):
            row = np.full((height, len(positions) * (width + GAP) - GAP, 3), 255, np.uint8)
            for column, t in enumerate(positions):
                row[:, column * (width + GAP):column * (width + GAP) + width] = frames[t]
            rows.append(row)
            rows.append(np.full((GAP, row.shape[1], 3), 255, np.uint8))
        rows.append(np.full((GAP, row.shape[1], 3), 255, np.uint8))
    return np.concatenate(rows[:-2])


def write_strip(bundle_dir: str | pathlib.Path, out: str | pathlib.Path, num_clips: int = 4,
                every: int = 1, seed: int = 0) -> pathlib.Path:
    """Generates the clips, then writes the PNG atomically; returns its path."""
    out = pathlib.Path(out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out={out} must name a .png file.")
    if num_clips < 1 or every < 1:
        raise UserError(f"--num_clips={num_clips} and --every={every} must be at least 1.")
    loaded = bundle.load_eval_run(bundle_dir, [])
    settings = eval_run.settings_from_config(loaded.config)
    truth = sample.heldout_clips(loaded.config, settings.num_frames, num_clips,
                                 lower_hint="this bundle's test set has no clip that long")
    generator = sample.load_generator(loaded.config, loaded.workdir)
    generated = eval_run.generate_set(generator, truth, seed, settings)
    image = strip_image(generated, truth, every)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda temp: Image.fromarray(image).save(temp, format="PNG"))
    return out


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m ganime_jax.evaluation.clip_strip",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="an inference bundle's folder")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--num_clips", type=int, default=4)
    parser.add_argument("--every", type=int, default=1, help="show every n-th frame")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with exit_on_user_error():
        out = write_strip(args.bundle, args.out, args.num_clips, args.every, args.seed)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
