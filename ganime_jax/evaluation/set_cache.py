"""What `--mode=eval` keeps between runs: each clip set's I3D features and frame scores.

Entries are keyed by the content of the clips (and, for scores, of the true clips they are
scored against) plus every option and version that changes the numbers. So the true clips,
the cross-fade and the hold are computed once per test set; the VQ-GAN reconstruction once per
tokenizer; a sampled set once per model, seed and sampling setting. A rebuilt dataset, a
retrained tokenizer or a changed metric gives other bytes or another key, never a stale entry.
"""
import dataclasses
from typing import Callable

import numpy as np

from ganime_jax.evaluation import scoring
from ganime_jax.metrics import fvd
from ganime_jax.metrics.array_cache import ArrayCache, cache_key, content_sha256

# I3D's preprocessing as `--mode=eval` runs it (see metrics/i3d.py).
I3D_OPTIONS = {"drop_first_frame": True, "half_pixel_centers": True}


@dataclasses.dataclass(frozen=True)
class SetCache:
    """The cache of one evaluation: its true clips and its scoring options."""

    store: ArrayCache
    truth_sha256: str
    ssim_gaussian: bool

    @classmethod
    def for_truth(cls, directory: str, truth: np.ndarray, ssim_gaussian: bool) -> "SetCache":
        return cls(ArrayCache(directory), content_sha256(truth), ssim_gaussian)

    def i3d_features(self, clips: np.ndarray,
                     compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The clips' I3D features, from the cache or `compute()` (then stored)."""
        key = cache_key("i3d_features", feature_version=fvd.FEATURE_VERSION,
                        clips_sha256=content_sha256(clips), **I3D_OPTIONS)
        return self.store.get_or_compute(key, compute)

    def _scores_key(self, clips: np.ndarray) -> dict:
        return cache_key("frame_scores", scores_version=scoring.SCORES_VERSION,
                         metrics=list(scoring.METRICS), truth_sha256=self.truth_sha256,
                         clips_sha256=content_sha256(clips), ssim_gaussian=self.ssim_gaussian,
                         psnr_cap_db=scoring.PSNR_CAP_DB)

    def frame_scores(self, clips: np.ndarray) -> dict[str, np.ndarray] | None:
        """The clips' stored `scoring.frame_scores` against the true clips, or None."""
        stacked = self.store.load(self._scores_key(clips))
        if stacked is None:
            return None
        return dict(zip(scoring.METRICS, stacked))

    def save_frame_scores(self, clips: np.ndarray, scores: dict[str, np.ndarray]) -> None:
        self.store.save(self._scores_key(clips),
                        np.stack([scores[name] for name in scoring.METRICS]))
