"""Per-frame PSNR, SSIM and LPIPS of uint8 frames, and per-video / per-position aggregation.

PSNR and SSIM match scikit-image (`peak_signal_noise_ratio(data_range=255)` and
`structural_similarity(channel_axis=-1, data_range=255)`): frames (..., H, W, 3) with any
leading dims, numpy or jnp, one value per frame. SSIM defaults to scikit-image's defaults
(7x7 uniform window, K1 0.01, K2 0.03, sample covariance); `gaussian_weights=True,
use_sample_covariance=False` gives the 11x11 sigma-1.5 Gaussian SSIM of Wang et al., which is
what `tf.image.ssim` (used by the original GANime evaluation) computes. Statistics are taken
over windows lying fully inside the frame (scikit-image crops the border the same way).

LPIPS reuses `ganime_jax.losses.perceptual` (VGG16 LPIPS v0.1) on frames mapped to [-1, 1].
"""
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ganime_jax.batching import map_in_batches
from ganime_jax.data import pixels
from ganime_jax.errors import UserError
from ganime_jax.losses.perceptual import LpipsParams, lpips_from_taps, lpips_taps

DATA_RANGE = 255.0  # uint8 frames
GAUSSIAN_TRUNCATE = 3.5  # scikit-image's Gaussian window radius, in sigmas


def _check_frames(a: jax.Array, b: jax.Array, name: str) -> None:
    if a.shape != b.shape or a.ndim < 3 or a.shape[-1] != 3:
        raise UserError(f"{name} wants two equally shaped (..., H, W, 3) frame arrays, got "
                        f"{a.shape} and {b.shape}")


def psnr(a: jax.Array, b: jax.Array, data_range: float = DATA_RANGE) -> jax.Array:
    """PSNR in dB per frame, shape a.shape[:-3]; inf where the frames are identical."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    _check_frames(a, b, "psnr")
    diff = a.astype(jnp.float32) - b.astype(jnp.float32)
    mse = jnp.mean(jnp.square(diff), axis=(-3, -2, -1))
    return 10.0 * jnp.log10(data_range ** 2 / mse)


def _window(win_size: int, gaussian_weights: bool, sigma: float) -> np.ndarray:
    if not gaussian_weights:
        return np.full((win_size,), 1.0 / win_size)
    radius = (win_size - 1) // 2
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return taps / taps.sum()


def _filter_valid(x: jax.Array, taps: np.ndarray) -> jax.Array:
    """Separable weighted mean over every full window of a (N, H, W, C) array."""
    size = len(taps)
    h, w = x.shape[1] - size + 1, x.shape[2] - size + 1
    x = sum(float(t) * x[:, i:i + h] for i, t in enumerate(taps))
    return sum(float(t) * x[:, :, i:i + w] for i, t in enumerate(taps))


@functools.partial(jax.jit, static_argnames=(
    "data_range", "win_size", "gaussian_weights", "sigma", "k1", "k2", "use_sample_covariance"))
def _ssim_nhwc(a: jax.Array, b: jax.Array, data_range: float, win_size: int,
               gaussian_weights: bool, sigma: float, k1: float, k2: float,
               use_sample_covariance: bool) -> jax.Array:
    taps = _window(win_size, gaussian_weights, sigma)
    x, y = a.astype(jnp.float32), b.astype(jnp.float32)
    # One filter pass over the five maps stacked on the channel axis.
    stats = _filter_valid(jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1), taps)
    mx, my, mxx, myy, mxy = jnp.split(stats, 5, axis=-1)
    cov_norm = win_size ** 2 / (win_size ** 2 - 1) if use_sample_covariance else 1.0
    vx, vy = cov_norm * (mxx - mx * mx), cov_norm * (myy - my * my)
    vxy = cov_norm * (mxy - mx * my)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return jnp.mean(s, axis=(1, 2, 3))


def ssim(a: jax.Array, b: jax.Array, data_range: float = DATA_RANGE, win_size: int | None = None,
         gaussian_weights: bool = False, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03,
         use_sample_covariance: bool = True) -> jax.Array:
    """Mean SSIM per frame (over pixels and channels), shape a.shape[:-3].

    `win_size` defaults to 7 (uniform window) or, with `gaussian_weights`, to the window
    scikit-image derives from `sigma` (11 for sigma 1.5).
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    _check_frames(a, b, "ssim")
    if win_size is None:
        win_size = 2 * int(GAUSSIAN_TRUNCATE * sigma + 0.5) + 1 if gaussian_weights else 7
    if win_size % 2 != 1 or win_size > min(a.shape[-3:-1]):
        raise UserError(f"ssim: win_size must be odd and at most the frame size "
                        f"{a.shape[-3:-1]}, got {win_size}")
    lead = a.shape[:-3]
    flat = (-1, *a.shape[-3:])
    values = _ssim_nhwc(a.reshape(flat), b.reshape(flat), float(data_range), int(win_size),
                        bool(gaussian_weights), float(sigma), float(k1), float(k2),
                        bool(use_sample_covariance))
    return values.reshape(lead)


def per_video_mean(values: jax.Array) -> jax.Array:
    """(B, T) per-frame metric -> (B,) mean over the frames of each video."""
    values = jnp.asarray(values)
    if values.ndim != 2:
        raise UserError(f"per_video_mean wants (B, T) values, got {values.shape}")
    return jnp.mean(values, axis=1)


def per_position(values: jax.Array) -> jax.Array:
    """(B, T) per-frame metric -> (T,) mean over videos at each frame position."""
    values = jnp.asarray(values)
    if values.ndim != 2:
        raise UserError(f"per_position wants (B, T) values, got {values.shape}")
    return jnp.mean(values, axis=0)


@jax.jit
def _taps_uint8(params: LpipsParams, frames: jax.Array) -> list[jax.Array]:
    return lpips_taps(params, pixels.to_unit(frames))


@jax.jit
def _lpips_to_taps(params: LpipsParams, taps: list[jax.Array], frames: jax.Array) -> jax.Array:
    return lpips_from_taps(params, taps, lpips_taps(params, pixels.to_unit(frames)))


def lpips_against(params: LpipsParams, truth: np.ndarray, others: Sequence[np.ndarray],
                  batch_size: int = 64) -> list[np.ndarray]:
    """LPIPS per frame of each of `others` against `truth`: uint8 frames (..., H, W, 3), all
    shaped alike; one float32 array of shape truth.shape[:-3] per entry of `others`.

    The true frames go through VGG once per batch for all of `others` (N sets cost N + 1
    VGG passes, not 2N). `batch_size` frames per call, one compile per frame shape (a last
    partial batch is padded with copies of its last frame).
    """
    truth = np.asarray(truth)
    others = [np.asarray(other) for other in others]
    for other in others:
        _check_frames(truth, other, "lpips_against")
        if other.dtype != np.uint8:
            raise UserError(f"lpips_against wants uint8 frames, got {other.dtype}")
    if truth.dtype != np.uint8:
        raise UserError(f"lpips_against wants uint8 frames, got {truth.dtype}")
    if batch_size < 1:
        raise UserError(f"lpips_against batch_size must be positive, got {batch_size}")
    lead = truth.shape[:-3]
    flat = [array.reshape(-1, *array.shape[-3:]) for array in (truth, *others)]
    if flat[0].shape[0] == 0 or not others:
        return [np.zeros(lead, np.float32) for _ in others]

    def distances(_: int, true_frames: np.ndarray, *sets: np.ndarray) -> np.ndarray:
        taps = _taps_uint8(params, true_frames)
        return np.stack([np.asarray(_lpips_to_taps(params, taps, frames)) for frames in sets],
                        axis=1)
    values = map_in_batches(distances, flat, batch_size, desc="LPIPS")
    return [values[:, i].astype(np.float32).reshape(lead) for i in range(len(others))]


def lpips_frames(params: LpipsParams, a: np.ndarray, b: np.ndarray,
                 batch_size: int = 64) -> np.ndarray:
    """LPIPS per frame of uint8 frames (..., H, W, 3), shape a.shape[:-3], float32 numpy."""
    return lpips_against(params, a, [b], batch_size)[0]
