"""I3D's first layer on the small frames themselves: the bilinear resize to 224x224 folded into
the 7x7x7 stride-2 stem convolution.

Both are linear, so the stem of the resized video is, at every output position, a weighted sum
of a few input pixels: output row i reads resized rows 2i-2 .. 2i+4 (SAME padding; rows
outside the frame are 0), and those are bilinear mixtures of a window of K input rows (K = 4
for 64 rows, 6 for 128). Writing e_i (7 x K) for that mixing, the stem at (i, j) is

    sum over (dt, r, s, c) of  x[2t+dt, p0(i)+r, q0(j)+s, c] * (W contracted with e_i, e_j)

with 7*K*K*3 terms instead of the 7*7*7*3 = 1029 of the conv on the resized frames (336 for
64x64 frames: a third), and the 224x224 video is never built. The mixing matrices repeat
with period 7 along each axis, apart from the edges (clamped interpolation, zero padding), so
outputs are grouped by their (row, column) mixing classes: one matmul per pair of classes,
on windows gathered from the small frames. The sums are the same as `i3d.i3d_forward`'s on
`i3d.preprocess_videos` output, in another order (float32 rounding apart;
tests/test_metrics.py).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

TAPS = 7  # the stem's kernel size along each axis
STRIDE = 2


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF SAME padding (before, after) of one axis."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


@functools.cache
def axis_classes(in_size: int, out_size: int, weights: bytes
                 ) -> tuple[int, tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]]:
    """(window K, classes) of one spatial axis: each class is (outputs, window starts,
    mixing (7, K)), the outputs of one class sharing the mixing.

    `weights`: the (out_size, in_size) float64 resize matrix's bytes (hashable for the cache).
    """
    resize = np.frombuffer(weights, np.float64).reshape(out_size, in_size)
    before, _ = same_padding(out_size, TAPS, STRIDE)
    outputs = -(-out_size // STRIDE)
    taps = np.zeros((outputs, TAPS, in_size))
    for i in range(outputs):
        for d in range(TAPS):
            row = STRIDE * i + d - before
            if 0 <= row < out_size:
                taps[i, d] = resize[row]
    used = [np.flatnonzero(np.any(taps[i] != 0, axis=0)) for i in range(outputs)]
    window = max(u[-1] - u[0] + 1 for u in used if len(u))
    starts = np.array([min(u[0] if len(u) else 0, in_size - window) for u in used])
    mixing = np.stack([taps[i][:, s:s + window] for i, s in enumerate(starts)])
    groups: dict[bytes, list[int]] = {}
    for i in range(outputs):
        groups.setdefault(mixing[i].tobytes(), []).append(i)
    classes = tuple((np.array(members), starts[members], mixing[members[0]].astype(np.float32))
                    for members in groups.values())
    return window, classes


def stem_of_small_frames(x: jax.Array, kernel: jax.Array, rows: np.ndarray, cols: np.ndarray,
                         precision: jax.lax.Precision) -> jax.Array:
    """The stem conv (no bias) of the resized video, from the small frames.

    x: (B, T, H, W, C) float, already scaled (and padded in time) as the resized video would
    be; kernel: (7, 7, 7, C, O); rows, cols: the (R, H) and (R', W) resize matrices (R = R' =
    224 for I3D). Returns (B, ceil(T/2), ceil(R/2), ceil(R'/2), O).
    """
    if kernel.shape[:3] != (TAPS,) * 3:
        raise ValueError(f"stem_of_small_frames wants a {TAPS}x{TAPS}x{TAPS} kernel, got "
                         f"{kernel.shape}")
    batch, frames, height, width, channels = x.shape
    out_frames = -(-frames // STRIDE)
    before, after = same_padding(frames, TAPS, STRIDE)
    x = jnp.pad(x, ((0, 0), (before, after), (0, 0), (0, 0), (0, 0)))
    # (B, T_out, H, W, 7, C): the 7 frames each output frame reads.
    x = jnp.stack([x[:, d:d + STRIDE * (out_frames - 1) + 1:STRIDE] for d in range(TAPS)],
                  axis=4)
    row_window, row_classes = axis_classes(height, rows.shape[0],
                                           np.asarray(rows, np.float64).tobytes())
    col_window, col_classes = axis_classes(width, cols.shape[0],
                                           np.asarray(cols, np.float64).tobytes())
    row_blocks, row_order = [], []
    for members_i, starts_i, mix_i in row_classes:
        # (B, T_out, |I|, K, W, 7, C)
        row_take = starts_i[:, None] + np.arange(row_window)
        x_rows = x[:, :, row_take]
        col_blocks, col_order = [], []
        for members_j, starts_j, mix_j in col_classes:
            col_take = starts_j[:, None] + np.arange(col_window)
            windows = x_rows[:, :, :, :, col_take]  # (B, T_out, |I|, K, |J|, K', 7, C)
            mixed = jnp.einsum("tdeco,dr,es->rstco", kernel, mix_i, mix_j, precision=precision)
            col_blocks.append(jnp.einsum("bnirjstc,rstco->bnijo", windows, mixed,
                                         precision=precision))
            col_order.append(members_j)
        row_blocks.append(jnp.concatenate(col_blocks, axis=3))
        row_order.append(members_i)
    out = jnp.concatenate(row_blocks, axis=2)
    out = jnp.take(out, np.argsort(np.concatenate(row_order)), axis=2)
    return jnp.take(out, np.argsort(np.concatenate(col_order)), axis=3)
