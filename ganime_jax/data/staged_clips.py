"""Clips staged on disk, one npz per source, and the two datasets written from them.

Both dataset builders (episodes from video files, the embedded synthetic anime) cut shots into
clips with `ClipCutter` (held frames dropped, shots split into clips of min..max frames), stage
each source's clips with `FileClips.save`, and write `{name}_frames` and `{name}_clips` with
`write_staged_datasets`, so real and synthetic data go through the same logic.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from ganime_jax.data import clip_ops, tfds_io
from ganime_jax.data.shot_detection import DEFAULT_MIN_SCENE_LEN
from ganime_jax.errors import UserError

StagedSource = tuple[str, str]  # (source name, npz path)
COUNT_KEYS = ("frames_read", "shots", "clips", "clip_frames", "frames_held", "frames_leftover")


@dataclasses.dataclass(frozen=True)
class ClipSettings:
    """Everything that changes the clips cut from one file."""

    height: int = 64
    width: int = 128
    min_frames: int = 15
    max_frames: int = 25
    held_threshold: float = 0.01
    shot_threshold: float | None = None
    min_scene_len: int = DEFAULT_MIN_SCENE_LEN

    def __post_init__(self):
        if self.height < 1 or self.width < 1:
            raise UserError(f"frame size must be positive, got {self.height}x{self.width}.")
        if not 1 <= self.min_frames <= self.max_frames:
            raise UserError(
                f"need 1 <= min_frames <= max_frames, got {self.min_frames}..{self.max_frames}."
            )
        if self.held_threshold < 0:
            raise UserError(f"held_threshold must be >= 0, got {self.held_threshold}.")
        if self.min_scene_len < 1:
            raise UserError(f"min_scene_len must be >= 1, got {self.min_scene_len}.")


@dataclasses.dataclass
class FileClips:
    """The clips of one file: clip frames concatenated, plus per-clip and per-frame indices."""

    frames: np.ndarray  # (N, H, W, 3) uint8, the frames of all clips back to back
    frame_index: np.ndarray  # (N,) index of each frame in the decoded video
    clip_length: np.ndarray  # (K,)
    clip_shot: np.ndarray  # (K,) shot index within the file
    clip_in_shot: np.ndarray  # (K,) clip index within its shot
    frames_read: int
    shots: int
    frames_held: int
    frames_leftover: int

    @property
    def num_clips(self) -> int:
        return len(self.clip_length)

    def clips(self) -> list[tuple[int, int]]:
        """Half-open ranges of each clip in `frames`."""
        bounds = np.cumsum([0, *self.clip_length.tolist()])
        return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]

    def counts(self) -> dict[str, int]:
        return {
            "frames_read": self.frames_read,
            "shots": self.shots,
            "clips": self.num_clips,
            "clip_frames": int(self.clip_length.sum()),
            "frames_held": self.frames_held,
            "frames_leftover": self.frames_leftover,
        }

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in dataclasses.asdict(self).items()})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, with_frames: bool = True) -> FileClips:
        """Read a stage; without frames (only the indices and counts) it is cheap."""
        pixels = ("frames", "frame_index")
        with np.load(path) as data:
            fields = {
                f.name: data[f.name] if with_frames or f.name not in pixels else np.zeros(0)
                for f in dataclasses.fields(cls)
            }
        for name in ("frames_read", "shots", "frames_held", "frames_leftover"):
            fields[name] = int(fields[name])
        return cls(**fields)


class ClipCutter:
    """Collects the clips of consecutive shots of one file."""

    def __init__(self, settings: ClipSettings):
        self._settings = settings
        self._frames: list[np.ndarray] = []
        self._frame_index: list[np.ndarray] = []
        self._clip_length: list[int] = []
        self._clip_shot: list[int] = []
        self._clip_in_shot: list[int] = []
        self.shots = 0
        self.frames_held = 0
        self.frames_leftover = 0

    def add_shot(self, frames: np.ndarray, first_index: int) -> None:
        s = self._settings
        kept, kept_index = clip_ops.drop_held_frames(frames, s.held_threshold)
        self.frames_held += len(frames) - len(kept)
        ranges = clip_ops.split_into_clips(len(kept), s.min_frames, s.max_frames)
        self.frames_leftover += len(kept) - sum(end - start for start, end in ranges)
        for clip_in_shot, (start, end) in enumerate(ranges):
            self._frames.append(kept[start:end])
            self._frame_index.append(first_index + kept_index[start:end])
            self._clip_length.append(end - start)
            self._clip_shot.append(self.shots)
            self._clip_in_shot.append(clip_in_shot)
        self.shots += 1

    def result(self, frames_read: int) -> FileClips:
        s = self._settings
        empty = np.zeros((0, s.height, s.width, 3), np.uint8)
        return FileClips(
            frames=np.concatenate(self._frames) if self._frames else empty,
            frame_index=np.concatenate(self._frame_index) if self._frames else np.zeros(0, int),
            clip_length=np.asarray(self._clip_length, np.int64),
            clip_shot=np.asarray(self._clip_shot, np.int64),
            clip_in_shot=np.asarray(self._clip_in_shot, np.int64),
            frames_read=frames_read,
            shots=self.shots,
            frames_held=self.frames_held,
            frames_leftover=self.frames_leftover,
        )


def _clip_examples(stages: Sequence[StagedSource]) -> Iterator[dict]:
    for source, stage in stages:
        clips = FileClips.load(Path(stage))
        for (start, end), shot, in_shot in zip(clips.clips(), clips.clip_shot, clips.clip_in_shot):
            yield {
                "frames": clips.frames[start:end],
                "n_frames": end - start,
                "source": source,
                "shot_index": int(shot),
                "clip_index": int(in_shot),
            }


def _frame_examples(stages: Sequence[StagedSource]) -> Iterator[dict]:
    for source, stage in stages:
        clips = FileClips.load(Path(stage))
        shot_of_frame = np.repeat(clips.clip_shot, clips.clip_length)
        for frame, shot, index in zip(clips.frames, shot_of_frame, clips.frame_index):
            yield {"frame": frame, "source": source, "shot_index": int(shot), "frame_index": int(index)}


def write_staged_datasets(
    data_root: str,
    name: str,
    splits: Mapping[str, Sequence[StagedSource]],
    settings: ClipSettings,
    description: str,
    metadata: dict,
) -> None:
    """Write `{name}_frames` (every frame of every clip) and `{name}_clips` from staged sources."""
    frame_shape = (settings.height, settings.width, 3)
    tfds_io.write_dataset(
        data_root, f"{name}_frames", "frames", {s: _frame_examples(st) for s, st in splits.items()},
        frame_shape, description=f"Frames of the clips of {description}", metadata=metadata,
    )
    tfds_io.write_dataset(
        data_root, f"{name}_clips", "clips", {s: _clip_examples(st) for s, st in splits.items()},
        frame_shape, description=f"Clips of {settings.min_frames}..{settings.max_frames} frames of {description}",
        metadata=metadata,
    )
