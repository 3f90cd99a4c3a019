"""GANime's conditioning convention, the one place training and generation take it from.

A clip has T frames f_0..f_{T-1}; f_{T-1} is the last frame, given like f_0. Frame t
(1 <= t <= T-2) is predicted from
- the last frame f_{T-1},
- the k = n_frames_before frames t-k..t-1, oldest first, where indices below 0 repeat f_0,
- the countdown (T-1) - t: frames left until the last frame (1 for the frame just before it).
Generation fills frames 1..T-2 in order by the same rule, its own frames serving as context;
the clip it returns is [f_0, generated 1..T-2, f_{T-1}].

In a batch padded to M frames, clip b has n_b real frames: its last frame is f_{n_b - 1} and
its targets are t = 1..n_b-2; the targets beyond are padding and marked invalid.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

MIN_CLIP_FRAMES = 3  # first, last and at least one frame to predict


def context_indices(t: int, k: int) -> list[int]:
    """Frame indices of the context of target frame t, oldest first (negatives -> 0)."""
    return [max(i, 0) for i in range(t - k, t)]


def remaining_frames(t: int | jax.Array, num_frames: int | jax.Array) -> int | jax.Array:
    """Frames left from target t until the last frame of a clip of `num_frames` frames."""
    return num_frames - 1 - t


def target_frames(num_frames: int) -> np.ndarray:
    """The frame indices a clip of `num_frames` frames is trained to predict: 1..T-2."""
    return np.arange(1, num_frames - 1, dtype=np.int32)


def context_index_array(num_frames: int, k: int) -> np.ndarray:
    """(T-2, k) int32: row i holds `context_indices(i + 1, k)`."""
    return np.asarray([context_indices(int(t), k) for t in target_frames(num_frames)],
                      np.int32).reshape(-1, k)


def last_frame_tokens(tokens: jax.Array, n_frames: jax.Array) -> jax.Array:
    """Tokens of each clip's last real frame: tokens (B, M, hw), n_frames (B,) -> (B, hw)."""
    index = jnp.clip(n_frames.astype(jnp.int32) - 1, 0, tokens.shape[1] - 1)
    return jnp.take_along_axis(tokens, index[:, None, None], axis=1)[:, 0]


def initial_context(first_tokens: jax.Array, k: int) -> jax.Array:
    """The context of target frame 1: the first frame repeated k times, (B, hw) -> (B, k, hw)."""
    return jnp.repeat(first_tokens[:, None], k, axis=1)


def push_frame(context: jax.Array, frame_tokens: jax.Array) -> jax.Array:
    """Slides the context window by one frame: drops the oldest, appends `frame_tokens`."""
    return jnp.concatenate([context[:, 1:], frame_tokens[:, None].astype(context.dtype)], axis=1)


class TeacherForcing(NamedTuple):
    """Every target of a padded batch with its true context, for one parallel forward pass.

    F = M - 2 targets per clip (t = 1..M-2, in order).
    """
    last: jax.Array       # (B, hw): each clip's last real frame
    context: jax.Array    # (B, F, k, hw)
    remaining: jax.Array  # (B, F) int32, clipped at 0 for invalid targets
    targets: jax.Array    # (B, F, hw)
    valid: jax.Array      # (B, F) bool: t <= n_frames - 2


def teacher_forcing_inputs(tokens: jax.Array, n_frames: jax.Array, k: int) -> TeacherForcing:
    """Gathers all targets of tokens (B, M, hw) with their contexts, clip lengths n_frames (B,)."""
    num_frames = tokens.shape[1]
    t = jnp.asarray(target_frames(num_frames))
    n_frames = n_frames.astype(jnp.int32)
    remaining = remaining_frames(t[None, :], n_frames[:, None])
    return TeacherForcing(
        last=last_frame_tokens(tokens, n_frames),
        context=tokens[:, jnp.asarray(context_index_array(num_frames, k))],
        remaining=jnp.maximum(remaining, 0),
        targets=tokens[:, 1:num_frames - 1],
        valid=remaining >= 1,
    )


def valid_targets(n_frames: jax.Array, num_frames: int) -> jax.Array:
    """(B, M-2) bool: which targets t = 1..M-2 of a batch padded to `num_frames` are real."""
    t = jnp.asarray(target_frames(num_frames))
    return remaining_frames(t[None, :], n_frames.astype(jnp.int32)[:, None]) >= 1


def copy_baseline_accuracies(tokens: np.ndarray, n_frames: np.ndarray) -> dict[str, float]:
    """Token accuracy over the valid targets of two predictors that need no model.

    `copy_previous`: frame t is frame t-1 (the reference for teacher-forced accuracy, whose
    context holds the true frame t-1). `nearer_end`: frame t is the first frame up to the middle
    of the clip, the last frame after it (the reference for generation, which sees only those).
    tokens (B, M, hw), n_frames (B,) with the padding convention of `teacher_forcing_inputs`.
    """
    tokens, n_frames = np.asarray(tokens), np.asarray(n_frames).astype(np.int64)
    t = target_frames(tokens.shape[1])
    valid = np.asarray(valid_targets(n_frames, tokens.shape[1]))  # (B, F)
    targets = tokens[:, t]
    last = np.take_along_axis(tokens, np.clip(n_frames - 1, 0, None)[:, None, None], axis=1)
    first_half = t[None, :] <= (n_frames[:, None] - 1) / 2  # (B, F)
    nearer_end = np.where(first_half[..., None], tokens[:, :1], last)
    count = max(int(valid.sum()) * tokens.shape[2], 1)
    return {name: float(((guess == targets) & valid[..., None]).sum() / count)
            for name, guess in (("copy_previous", tokens[:, t - 1]), ("nearer_end", nearer_end))}
