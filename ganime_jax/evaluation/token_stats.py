"""How predictable a tokenizer's tokens are for stage 2, from held-out clips: JSON.

    python -m ganime_jax.evaluation.token_stats --tokenizer_workdir=W [--data_root=D]
        [--num_clips=16] [--num_frames=20]

Reconstruction quality does not say whether a GPT can learn to move things with the tokens.
What it needs is that a patch that does not change keeps its token, and that a change in one
place changes tokens there only. Measured on the first held-out clips of the tokenizer's own
dataset (`config.data` of its workdir; --data_root overrides where it lives):

- unchanged_patch_token_kept: of the token positions whose pixels are identical in the previous
  frame, the share whose token is too (1.0 for a tokenizer of purely local tokens).
- copy_previous_agreement: the share of all tokens equal to the previous frame's there (what
  a GPT that copies the previous frame scores).
- flat_patch_share and codes_on_flat_patches: the patches of one colour (every pixel within
  `FLAT_TOLERANCE` of the patch's first), and how many distinct codes they take.
- painted_corner_tokens_changed / far_tokens_changed: painting the top-left patch white in each
  clip's first frame changes this many tokens on average, and this many more than
  `NEAR_CELLS` grid cells away from it.
"""
import argparse
import json
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

from ganime_jax import sample
from ganime_jax.errors import UserError, exit_on_user_error
from ganime_jax.models.vqgan import space_to_depth
from ganime_jax.tokenizer import Tokenizer, load_tokenizer

FLAT_TOLERANCE = 2  # uint8 levels
NEAR_CELLS = 2  # grid cells (Chebyshev distance) counted as next to the painted patch
PAINT_VALUE = 255


def _tokens(tokenizer: Tokenizer, frames: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., h, w) tokens."""
    flat = frames.reshape(-1, *frames.shape[-3:])
    tokens = np.asarray(tokenizer.encode(flat))
    return tokens.reshape(*frames.shape[:-3], *tokenizer.grid_shape)


def _patches(frames: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(..., H, W, C) -> (..., h, w, the patch's pixels): `space_to_depth` of the grid's patches."""
    *lead, height, width, channels = frames.shape
    patches = space_to_depth(frames.reshape(-1, height, width, channels), height // grid[0])
    return patches.reshape(*lead, *grid, -1)


def token_stats(tokenizer: Tokenizer, clips: np.ndarray) -> dict:
    """The statistics of the module docstring for uint8 clips (N, T, H, W, 3)."""
    grid = tokenizer.grid_shape
    tokens = _tokens(tokenizer, clips)
    patches = _patches(clips, grid)
    unchanged = np.all(patches[:, 1:] == patches[:, :-1], axis=-1)
    kept = tokens[:, 1:] == tokens[:, :-1]
    flat = np.all(np.abs(patches.astype(np.int16) - patches[..., :1]) <= FLAT_TOLERANCE, axis=-1)

    painted = clips[:, 0].copy()
    painted[:, :clips.shape[2] // grid[0], :clips.shape[3] // grid[1]] = PAINT_VALUE
    changed = _tokens(tokenizer, painted) != tokens[:, 0]
    rows, cols = np.indices(grid)
    far = np.maximum(rows, cols) > NEAR_CELLS
    return {
        "num_clips": int(clips.shape[0]), "num_frames": int(clips.shape[1]),
        "grid": list(grid), "num_embeddings": tokenizer.num_embeddings,
        "tokenizer_step": tokenizer.step,
        "distinct_codes": int(np.unique(tokens).size),
        "unchanged_patch_share": float(unchanged.mean()),
        "unchanged_patch_token_kept": float(kept[unchanged].mean()) if unchanged.any() else None,
        "copy_previous_agreement": float(kept.mean()),
        "flat_patch_share": float(flat.mean()),
        "codes_on_flat_patches": int(np.unique(tokens[flat]).size),
        "painted_corner_tokens_changed": float(changed.sum(axis=(1, 2)).mean()),
        "far_tokens_changed": float(changed[:, far].sum(axis=1).mean()),
    }


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m ganime_jax.evaluation.token_stats",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer_workdir", required=True, help="a stage-1 (vqgan) workdir")
    parser.add_argument("--data_root", default="",
                        help="where its dataset lives (default: its config's data.data_root)")
    parser.add_argument("--num_clips", type=int, default=16)
    parser.add_argument("--num_frames", type=int, default=16)
    args = parser.parse_args(argv)
    with exit_on_user_error():
        if args.num_clips < 1 or args.num_frames < 2:
            raise UserError(f"--num_clips={args.num_clips} --num_frames={args.num_frames}: "
                            "give at least 1 clip of at least 2 frames.")
        tokenizer = load_tokenizer(pathlib.Path(args.tokenizer_workdir))
        config = tokenizer.config.copy_and_resolve_references()
        if args.data_root:
            config.data.data_root = args.data_root
        clips = sample.heldout_clips(config, args.num_frames, args.num_clips,
                                     lower_hint="pass a smaller --num_frames")
        stats = token_stats(tokenizer, clips)
    print(json.dumps({"tokenizer_workdir": args.tokenizer_workdir, **stats}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
