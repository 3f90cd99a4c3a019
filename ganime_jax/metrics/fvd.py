"""FVD and KVD: distances between two sets of I3D features.

FVD is the Frechet distance of Gaussians fitted to the features (Unterthiner et al. 2018), as
`tfgan.eval.frechet_classifier_distance_from_activations`, which both the FVD reference and
GANime call: float64 means, unbiased covariances (n - 1), and

    ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)).

The trace term is computed as tfgan does, from symmetric matrices only:
tr((S_a S_b)^(1/2)) = tr((S_a^(1/2) S_b S_a^(1/2))^(1/2)), both square roots by symmetric
eigendecomposition, eigenvalues below round-off level set to 0. Unlike
`scipy.linalg.sqrtm(S_a @ S_b)` this never produces imaginary parts, and it stays exact when the
covariances are singular (fewer clips than the 400 feature dimensions, the usual case).

KVD is the squared MMD with the polynomial kernel k(x, y) = (x.y / d + 1)^3, estimated without
bias (diagonals of the within-set kernel matrices left out), as GANime's `polynomial_mmd` and
KID. It can be slightly negative when the two sets come from the same distribution.

Both run with one BLAS thread: the matrices are at most a few hundred wide, where threads gain
nothing, and multithreaded OpenBLAS eigendecompositions on a busy CPU spin-wait (a 400x400
`eigh` took 2.5 s instead of 0.03 s on the shared 2-core machine).
"""
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from ganime_jax.errors import UserError
from ganime_jax.metrics import i3d

# Bumped whenever the features change for the same inputs (network, preprocessing, dtype).
# v2: resize folded into the stem; v3: 3D convs as 2D convs, max pools one axis at a time.
FEATURE_VERSION = "i3d-kinetics-400-logits-v3"


def _check_features(name: str, feats: np.ndarray, min_rows: int) -> np.ndarray:
    feats = np.asarray(feats, np.float64)
    if feats.ndim != 2 or feats.shape[0] < min_rows:
        raise UserError(f"{name}: want a (N, D) feature array with N >= {min_rows}, "
                        f"got shape {feats.shape}")
    if not np.all(np.isfinite(feats)):
        raise UserError(f"{name}: features contain NaN or inf; check the videos and the model")
    return feats


def _check_pair(feats_a: np.ndarray, feats_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = _check_features("first feature set", feats_a, 2)
    b = _check_features("second feature set", feats_b, 2)
    if a.shape[1] != b.shape[1]:
        raise UserError(f"feature sets differ in dimension: {a.shape[1]} vs {b.shape[1]}")
    return a, b


def _resolved(values: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with those below round-off level (as numpy's matrix_rank
    tolerance) set to 0: their square roots would otherwise add up to a visible bias."""
    tol = np.abs(values).max(initial=0.0) * len(values) * np.finfo(values.dtype).eps
    return np.where(values > tol, values, 0.0)


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(_resolved(values))) @ vectors.T


def trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """tr((cov_a cov_b)^(1/2)) for symmetric positive semi-definite matrices."""
    root_a = _symmetric_sqrt(cov_a)
    inner = root_a @ cov_b @ root_a
    return float(np.sum(np.sqrt(_resolved(np.linalg.eigvalsh((inner + inner.T) / 2)))))


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance of the Gaussians fitted to two (N, D) feature sets (N >= 2 each)."""
    a, b = _check_pair(feats_a, feats_b)
    with threadpool_limits(limits=1, user_api="blas"):
        mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
        cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        mean_term = float(np.sum(np.square(mean_a - mean_b)))
        trace_term = float(np.trace(cov_a) + np.trace(cov_b)) - 2.0 * trace_sqrt_product(
            cov_a, cov_b)
    return mean_term + trace_term


def kernel_distance(feats_a: np.ndarray, feats_b: np.ndarray, degree: int = 3,
                    gamma: float | None = None, coef0: float = 1.0) -> float:
    """Unbiased squared MMD with the kernel (gamma x.y + coef0)^degree, gamma = 1/D by default."""
    a, b = _check_pair(feats_a, feats_b)
    gamma = 1.0 / a.shape[1] if gamma is None else gamma

    def kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (gamma * (x @ y.T) + coef0) ** degree

    m, n = a.shape[0], b.shape[0]
    with threadpool_limits(limits=1, user_api="blas"):
        k_aa, k_bb, k_ab = kernel(a, a), kernel(b, b), kernel(a, b)
    within_a = (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
    within_b = (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
    return float(within_a + within_b - 2.0 * k_ab.mean())


def _as_features(name: str, data: np.ndarray, **i3d_options: Any) -> np.ndarray:
    """(N, D) float features pass through; (N, T, H, W, 3) uint8 videos go through I3D."""
    data = np.asarray(data)
    if data.ndim == 2:
        return data
    if data.ndim == 5:
        return i3d.i3d_logits(data, **i3d_options)
    raise UserError(f"{name}: want (N, D) features or (N, T, H, W, 3) uint8 videos, "
                    f"got shape {data.shape}")


def fvd_kvd(real: np.ndarray, fake: np.ndarray, **i3d_options: Any) -> dict[str, float | int]:
    """FVD and KVD between real and fake sets, each given as I3D features or uint8 videos.

    `i3d_options` go to `i3d.i3d_logits` (params, batch_size, drop_first_frame,
    half_pixel_centers) for whichever set is given as videos.
    """
    real_feats = _as_features("real set", real, **i3d_options)
    fake_feats = _as_features("fake set", fake, **i3d_options)
    return {"fvd": frechet_distance(real_feats, fake_feats),
            "kvd": kernel_distance(real_feats, fake_feats),
            "num_real": int(real_feats.shape[0]), "num_fake": int(fake_feats.shape[0])}
