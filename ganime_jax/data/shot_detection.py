"""Shot (scene) detection with PySceneDetect's ContentDetector.

Two entry points that give the same cuts:
- `detect_shots(path)`: PySceneDetect reads the file itself (PyAV backend).
- `ShotDetector`: fed one decoded frame at a time, so that a pipeline that already decodes the
  video (to keep the frames) detects shots in the same pass instead of decoding twice. It
  reproduces what PySceneDetect's SceneManager does to each frame (BGR, downscaled to about
  256 pixels wide) before handing it to the same detector.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import av
import cv2
import numpy as np
import scenedetect
from scenedetect import ContentDetector, FrameTimecode
from scenedetect.scene_manager import compute_downscale_factor

from ganime_jax.data.video_io import UnreadableVideoError

DEFAULT_THRESHOLD = 27.0
# Shots shorter than a clip are discarded later anyway, so the minimum only needs to stop
# flashes from being read as cuts; a long minimum would glue short shots onto their neighbours.
DEFAULT_MIN_SCENE_LEN = 8
BACKEND = "pyav"


def _content_detector(threshold: float | None, min_scene_len: int) -> ContentDetector:
    return ContentDetector(
        threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
        min_scene_len=min_scene_len,
    )


def cuts_to_shots(cuts: Sequence[int], num_frames: int) -> list[tuple[int, int]]:
    """Half-open frame ranges of the shots between `cuts` (first frame of each new shot)."""
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < num_frames), num_frames]
    return [(start, end) for start, end in zip(bounds[:-1], bounds[1:]) if end > start]


def detect_shots(
    path: str | os.PathLike,
    threshold: float | None = None,
    min_scene_len: int = DEFAULT_MIN_SCENE_LEN,
) -> list[tuple[int, int]]:
    """Shots of the video at `path` as half-open frame ranges covering every decoded frame."""
    try:
        video = scenedetect.open_video(str(path), backend=BACKEND)
        manager = scenedetect.SceneManager()
        manager.add_detector(_content_detector(threshold, min_scene_len))
        num_frames = manager.detect_scenes(video=video)
    except (scenedetect.VideoOpenFailure, av.error.FFmpegError, OSError, ValueError) as err:
        raise UnreadableVideoError(f"cannot decode video {path}: {err}. Check the file.") from err
    if num_frames == 0:
        raise UnreadableVideoError(f"video {path} has no decodable frames. Check the file.")
    scenes = manager.get_scene_list(start_in_scene=True)
    origin = scenes[0][0].frame_num
    return cuts_to_shots([start.frame_num - origin for start, _ in scenes[1:]], num_frames)


class ShotDetector:
    """Streaming cut detection: `push` RGB frames in order, then `finish`.

    `push` returns the cuts (index of the first frame of a new shot) confirmed so far; with the
    detector's merge filter a cut can be confirmed up to `min_scene_len` frames after it happened.
    """

    def __init__(
        self,
        fps: float,
        threshold: float | None = None,
        min_scene_len: int = DEFAULT_MIN_SCENE_LEN,
    ):
        self._fps = fps
        self._detector = _content_detector(threshold, min_scene_len)
        self._downscale: float | None = None
        self._num_frames = 0

    @property
    def num_frames(self) -> int:
        return self._num_frames

    def push(self, frame: np.ndarray) -> list[int]:
        height, width = frame.shape[:2]
        if self._downscale is None:
            self._downscale = compute_downscale_factor(max(width, height))
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        if self._downscale > 1.0:
            size = (max(1, round(width / self._downscale)), max(1, round(height / self._downscale)))
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_LINEAR)
        timecode = FrameTimecode(self._num_frames, fps=self._fps)
        self._num_frames += 1
        return [cut.frame_num for cut in self._detector.process_frame(timecode, bgr)]

    def finish(self) -> list[int]:
        """Cuts that the detector only reports once the video has ended."""
        if self._num_frames == 0:
            return []
        last = FrameTimecode(self._num_frames - 1, fps=self._fps)
        return [cut.frame_num for cut in self._detector.post_process(last)]
