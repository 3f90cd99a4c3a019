"""Per-frame scores of a set of clips against the true clips, and their per-run summary.

Only the in-between frames 1..T-2 are scored: the first and last frames are given to every
method, so they carry no information (and identical frames have an infinite PSNR).
"""
import functools
from typing import Any

import numpy as np

from ganime_jax.batching import map_in_batches
from ganime_jax.losses.perceptual import LpipsParams
from ganime_jax.metrics import image

# PSNR of identical frames is infinite, which would make any mean infinite; a frame that a
# method reproduces exactly (a held drawing, a static shot) scores this instead.
PSNR_CAP_DB = 100.0


def frame_scores(truth: np.ndarray, clips: np.ndarray, lpips_params: LpipsParams, *,
                 batch_size: int, ssim_gaussian: bool) -> dict[str, np.ndarray]:
    """{metric: (B, T-2) float32} of uint8 clips (B, T, H, W, 3) against the true clips.

    PSNR is capped at PSNR_CAP_DB. `ssim_gaussian` selects the 11x11 Gaussian SSIM of
    `tf.image.ssim` (the original GANime evaluation) instead of scikit-image's default.
    `batch_size` frames go through each metric call.
    """
    a, b = truth[:, 1:-1], clips[:, 1:-1]
    lead = a.shape[:2]
    a, b = a.reshape(-1, *a.shape[2:]), b.reshape(-1, *b.shape[2:])
    ssim = functools.partial(image.ssim, gaussian_weights=ssim_gaussian,
                             use_sample_covariance=not ssim_gaussian)
    scores = {
        "psnr": np.minimum(map_in_batches(lambda _, x, y: image.psnr(x, y), (a, b), batch_size),
                           PSNR_CAP_DB),
        "ssim": map_in_batches(lambda _, x, y: ssim(x, y), (a, b), batch_size),
        "lpips": image.lpips_frames(lpips_params, a, b, batch_size=batch_size),
    }
    return {name: values.astype(np.float32).reshape(lead) for name, values in scores.items()}


def summarize(scores: dict[str, np.ndarray]) -> dict[str, Any]:
    """One run's numbers: the mean of each metric over all scored frames, and its means per
    frame position (T-2,) and per clip (B,), as JSON-ready floats and lists."""
    summary: dict[str, Any] = {name: float(np.mean(values)) for name, values in scores.items()}
    summary["per_position"] = {name: np.asarray(image.per_position(values)).tolist()
                               for name, values in scores.items()}
    summary["per_video"] = {name: np.asarray(image.per_video_mean(values)).tolist()
                            for name, values in scores.items()}
    return summary
