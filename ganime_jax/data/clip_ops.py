"""Pure numpy operations that turn decoded shots into training clips.

Held frames: anime is drawn "on twos/threes", so consecutive frames repeat. A frame is *held*
when its mean absolute difference to the last kept frame (pixels scaled to [0, 1]) is below a
threshold; held frames are dropped so that every kept frame carries a new drawing.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import cv2
import numpy as np

from ganime_jax.errors import UserError

PIXEL_MAX = 255.0
TRAIN_SPLIT = "train"
TEST_SPLIT = "test"


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 images, in units of [0, 1] pixels."""
    return float(cv2.absdiff(a, b).mean()) / PIXEL_MAX


class HeldFrameFilter:
    """Streaming held-frame detector: `keep(frame)` says whether `frame` is a new drawing.

    The comparison is against the last *kept* frame (not the previous frame), so a slow drift
    made of many tiny steps is still kept once it has accumulated past the threshold. The
    filter holds a reference to the last kept frame: do not modify a frame after passing it.
    """

    def __init__(self, threshold: float = 0.01):
        if threshold < 0:
            raise UserError(f"held-frame threshold must be >= 0, got {threshold}.")
        self.threshold = threshold
        self._last_kept: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the last kept frame (call at every shot boundary)."""
        self._last_kept = None

    def keep(self, frame: np.ndarray) -> bool:
        if self._last_kept is not None and mean_abs_diff(frame, self._last_kept) < self.threshold:
            return False
        self._last_kept = frame
        return True


def drop_held_frames(frames: np.ndarray, threshold: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Drop held frames of one shot `(T, H, W, C)` uint8; the first frame is always kept.

    Returns the kept frames and their indices into `frames`.
    """
    held_filter = HeldFrameFilter(threshold)
    kept = np.asarray([i for i, frame in enumerate(frames) if held_filter.keep(frame)], np.int64)
    return frames[kept], kept


def split_into_clips(num_frames: int, min_frames: int, max_frames: int) -> list[tuple[int, int]]:
    """Cut a shot of `num_frames` frames into clips of `min_frames..max_frames` frames.

    Policy: when some number of clips k covers the shot exactly (k * min <= n <= k * max), the
    fewest such clips are used, with balanced lengths (they differ by at most one frame), so no
    frame is lost. Otherwise (n < min, or n just above a multiple of max, e.g. 26..29 frames for
    15..25) as many `max_frames` clips as fit are taken from the start and the tail, shorter
    than `min_frames`, is left over. Leftover = n - total clip length; the caller counts it.
    Returns half-open `(start, end)` ranges in order.
    """
    if not 1 <= min_frames <= max_frames:
        raise UserError(f"need 1 <= min_frames <= max_frames, got {min_frames}..{max_frames}.")
    fewest = -(-num_frames // max_frames)
    most = num_frames // min_frames
    if fewest <= most and num_frames > 0:
        base, extra = divmod(num_frames, fewest)
        lengths = [base + 1] * extra + [base] * (fewest - extra)
    else:
        lengths = [max_frames] * most
    bounds = np.cumsum([0, *lengths])
    return [(int(start), int(end)) for start, end in zip(bounds[:-1], bounds[1:])]


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize `(H, W, C)` or `(T, H, W, C)` uint8 frames to `height x width`.

    Aspect-ratio policy: first centre-crop to the target aspect ratio (so nothing is stretched;
    a 16:9 source loses a band at the top and bottom for a 2:1 target), then resize with area
    averaging when shrinking (no aliasing) or bicubic interpolation when enlarging.
    """
    if frames.ndim == 3:
        return resize_frames(frames[None], height, width)[0]
    src_h, src_w = frames.shape[1:3]
    crop_w = min(src_w, round(src_h * width / height))
    crop_h = min(src_h, round(src_w * height / width))
    if crop_h < 1 or crop_w < 1:
        raise UserError(f"a {src_w}x{src_h} frame is too small to crop to the {width}x{height} "
                        f"aspect ratio; give a larger image (ideally at least {width}x{height}).")
    top, left = (src_h - crop_h) // 2, (src_w - crop_w) // 2
    cropped = frames[:, top:top + crop_h, left:left + crop_w]
    if (crop_h, crop_w) == (height, width):
        return np.ascontiguousarray(cropped)
    shrinking = crop_h >= height and crop_w >= width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    out = np.empty((len(frames), height, width, frames.shape[-1]), np.uint8)
    for i, frame in enumerate(cropped):
        out[i] = cv2.resize(frame, (width, height), interpolation=interpolation).reshape(out[i].shape)
    return out


def assign_splits(sources: Sequence[str], test_fraction: float, seed: int) -> dict[str, str]:
    """Assign each source (an episode file) to "train" or "test", whole.

    Splitting by source keeps every shot of an episode in one split. Deterministic: the order is
    a seeded hash of each name, so the result does not depend on the order of `sources`. With two
    or more sources each split gets at least one; a single source goes to train.
    """
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    unique = sorted(set(sources))
    order = sorted(unique, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    num_test = 0
    if len(unique) >= 2:
        num_test = min(max(round(len(unique) * test_fraction), 1), len(unique) - 1)
    test = set(order[:num_test])
    return {s: TEST_SPLIT if s in test else TRAIN_SPLIT for s in unique}
