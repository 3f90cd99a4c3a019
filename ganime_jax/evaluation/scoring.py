"""Per-frame scores of a set of clips against the true clips, and their per-run summary.

Only the in-between frames 1..T-2 are scored: the first and last frames are given to every
method, so they carry no information (and identical frames have an infinite PSNR).
"""
import functools
from typing import Any, Sequence

import numpy as np

from ganime_jax.batching import map_in_batches
from ganime_jax.losses.perceptual import LpipsParams
from ganime_jax.metrics import image

# PSNR of identical frames is infinite, which would make any mean infinite; a frame that a
# method reproduces exactly (a held drawing, a static shot) scores this instead.
PSNR_CAP_DB = 100.0
# The metrics of `frame_scores`, in the order a cached score array stacks them; the version is
# bumped whenever their values change for the same clips.
METRICS = ("psnr", "ssim", "lpips")
SCORES_VERSION = "psnr-ssim-lpips-v1"


def frame_scores(truth: np.ndarray, sets: Sequence[np.ndarray], lpips_params: LpipsParams, *,
                 batch_size: int, ssim_gaussian: bool) -> list[dict[str, np.ndarray]]:
    """For each of `sets` (uint8 clips (B, T, H, W, 3) shaped like `truth`), {metric: (B, T-2)
    float32} against the true clips.

    PSNR is capped at PSNR_CAP_DB. `ssim_gaussian` selects the 11x11 Gaussian SSIM of
    `tf.image.ssim` (the original GANime evaluation) instead of scikit-image's default.
    `batch_size` frames go through each metric call; the true frames' LPIPS features are
    computed once for all sets.
    """
    a = truth[:, 1:-1]
    lead = a.shape[:2]
    a = a.reshape(-1, *a.shape[2:])
    middles = [clips[:, 1:-1].reshape(a.shape) for clips in sets]
    ssim = functools.partial(image.ssim, gaussian_weights=ssim_gaussian,
                             use_sample_covariance=not ssim_gaussian)
    lpips = image.lpips_against(lpips_params, a, middles, batch_size=batch_size)
    scores = []
    for b, lpips_values in zip(middles, lpips):
        values = {
            "psnr": np.minimum(map_in_batches(lambda _, x, y: image.psnr(x, y), (a, b),
                                              batch_size), PSNR_CAP_DB),
            "ssim": map_in_batches(lambda _, x, y: ssim(x, y), (a, b), batch_size),
            "lpips": lpips_values,
        }
        scores.append({name: v.astype(np.float32).reshape(lead) for name, v in values.items()})
    return scores


def summarize(scores: dict[str, np.ndarray]) -> dict[str, Any]:
    """One run's numbers: the mean of each metric over all scored frames, and its means per
    frame position (T-2,) and per clip (B,), as JSON-ready floats and lists."""
    summary: dict[str, Any] = {name: float(np.mean(values)) for name, values in scores.items()}
    summary["per_position"] = {name: np.asarray(image.per_position(values)).tolist()
                               for name, values in scores.items()}
    summary["per_video"] = {name: np.asarray(image.per_video_mean(values)).tolist()
                            for name, values in scores.items()}
    return summary
