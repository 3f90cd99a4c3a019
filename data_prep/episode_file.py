"""One video file -> its clips, staged to an npz so that an interrupted run can resume.

A worker process runs `stage_file` on one file: it decodes the video once, detects shots in the
same pass, drops held frames per shot, resizes and cuts each shot into clips, and saves them to
`{staging_dir}/{key}.npz` (written to a temporary name, then renamed). The key depends on the
file's identity and on every setting that changes the clips, so a stale stage is never reused.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import av
import numpy as np

from ganime_jax.data.staged_clips import ClipCutter, ClipSettings, FileClips
from ganime_jax.data import clip_ops
from ganime_jax.data.shot_detection import ShotDetector
from ganime_jax.data.video_io import UnreadableVideoError, VideoInfo, read_video, video_info

# Errors that mean "this file cannot be decoded": the file is skipped, the run goes on.
DECODE_ERRORS = (UnreadableVideoError, av.error.FFmpegError, OSError)
# A file that decodes to fewer than this share of the frames its header declares (and at
# least SHORT_READ_MIN_FRAMES fewer) was probably truncated: its clips are kept, with a note.
# The margin allows for edit lists and a duration-based count rounding off.
SHORT_READ_SHARE = 0.98
SHORT_READ_MIN_FRAMES = 2


def cut_file(path: Path, settings: ClipSettings, info: VideoInfo) -> FileClips:
    """Decode `path` (whose header `info` describes) once: detect shots while keeping the
    resized frames of the current shot.

    Held frames are judged on the resized frames: the threshold then applies to what the model
    sees, and area resizing averages out compression noise of repeated drawings.
    """
    detector = ShotDetector(info.fps, settings.shot_threshold, settings.min_scene_len)
    cutter = ClipCutter(settings)
    shot_start, pending = 0, []  # pending: resized frames from shot_start on

    def close_shot(cut: int) -> None:
        nonlocal shot_start
        if cut <= shot_start:  # the detector reports cuts in order; never an empty shot
            return
        length = cut - shot_start
        cutter.add_shot(np.stack(pending[:length]), shot_start)
        del pending[:length]
        shot_start = cut

    for frame in read_video(path):
        pending.append(clip_ops.resize_frames(frame, settings.height, settings.width))
        for cut in detector.push(frame):
            close_shot(cut)
    for cut in detector.finish():
        close_shot(cut)
    if pending:
        close_shot(detector.num_frames)
    if detector.num_frames == 0:
        raise UnreadableVideoError(f"video {path} has no decodable frames. Check the file.")
    return cutter.result(detector.num_frames)


def stage_key(path: Path, settings: ClipSettings) -> str:
    """File name (no extension) of the stage of `path`: changes when the file or settings do."""
    stat = path.stat()
    identity = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{settings}"
    return f"{path.stem}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


@dataclasses.dataclass(frozen=True)
class StageResult:
    """What a worker reports for one file (small, so it pickles cheaply between processes)."""

    path: str
    stage: str | None  # npz path; None when the file was skipped
    counts: dict[str, int]
    skip_reason: str | None = None
    reused: bool = False
    short_read: str | None = None  # why the file looks truncated, when it does


def stage_file(path: str, staging_dir: str, settings: ClipSettings) -> StageResult:
    """Cut `path` into clips and stage them, or reuse an existing stage of it."""
    file_path = Path(path)
    try:
        stage = Path(staging_dir) / f"{stage_key(file_path, settings)}.npz"
        info = video_info(file_path)
        if stage.exists():
            counts = FileClips.load(stage, with_frames=False).counts()
            return StageResult(path, str(stage), counts, reused=True,
                               short_read=short_read(counts["frames_read"], info.num_frames))
        clips = cut_file(file_path, settings, info)
    except DECODE_ERRORS as err:
        return StageResult(path, None, {}, skip_reason=f"unreadable video: {err}")
    clips.save(stage)
    counts = clips.counts()
    return StageResult(path, str(stage), counts,
                       short_read=short_read(counts["frames_read"], info.num_frames))


def short_read(decoded: int, declared: int) -> str | None:
    """A note when `decoded` frames fall clearly short of the `declared` count, else None."""
    if decoded >= SHORT_READ_SHARE * declared or declared - decoded < SHORT_READ_MIN_FRAMES:
        return None
    return (f"decoded {decoded} of the {declared} frames its header declares: probably "
            "truncated (its clips are kept)")
