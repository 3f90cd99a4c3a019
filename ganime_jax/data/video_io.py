"""Reading and writing video files (PyAV) and GIFs (Pillow).

Videos are written as 8-bit 4:2:0 YUV, the only layout every player and browser decodes, so
frame sizes must be even. Colour conversion uses swscale's accurate rounding and full chroma
interpolation: with the defaults a flat colour comes back biased by 2-3 levels per channel.
"""
from __future__ import annotations

import dataclasses
import fractions
import os
import re
import uuid
from collections.abc import Iterator
from types import TracebackType

import av
import numpy as np
from av.video.reformatter import Interpolation
from PIL import Image

from ganime_jax.errors import UserError

# Container format and encoder per file suffix.
_FORMATS: dict[str, tuple[str, str]] = {
    ".mp4": ("mp4", "libx264"),
    ".mkv": ("matroska", "libx264"),
    ".webm": ("webm", "libvpx-vp9"),
    ".avi": ("avi", "mpeg4"),
}
_PIXEL_FORMAT = "yuv420p"
PathLike = str | os.PathLike


def _swscale_flags(*names: str) -> Interpolation:
    flags = 0
    for name in names:
        flags |= int(getattr(Interpolation, name))
    return Interpolation(flags)


_ENCODE_INTERPOLATION = _swscale_flags("AREA", "ACCURATE_RND", "FULL_CHR_H_INP")
_DECODE_INTERPOLATION = _swscale_flags("BICUBIC", "ACCURATE_RND", "FULL_CHR_H_INT")
_RESIZE_INTERPOLATION = _swscale_flags("AREA", "ACCURATE_RND", "FULL_CHR_H_INT")
# Largest denominator used to turn a float frame rate into a fraction (23.976 -> 24000/1001).
_MAX_RATE_DENOMINATOR = 1001


class UnreadableVideoError(UserError):
    """A video file that cannot be opened or decoded."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    fps: float
    height: int
    width: int
    num_frames: int
    num_frames_estimated: bool = False


def _encoder_options(codec: str, quality: int) -> dict[str, str]:
    """Near-transparent settings: decoded frames stay within a few levels of the source."""
    if codec == "libx264":
        return {"crf": str(quality), "preset": "medium"}
    if codec == "libvpx-vp9":
        return {"crf": str(quality), "b": "0", "deadline": "good", "cpu-used": "4"}
    return {"qmin": "1", "qmax": "2"}  # mpeg4: the finest quantisers


def _check_frame(frame: np.ndarray, height: int | None, width: int | None) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        dtype = getattr(frame, "dtype", type(frame).__name__)
        raise UserError(f"video frames must be uint8 numpy arrays, got {dtype}; convert with "
                        "np.clip(x * 255, 0, 255).astype(np.uint8)")
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise UserError(f"a video frame must have shape (H, W, 3) RGB, got {frame.shape}")
    if height is not None and frame.shape[:2] != (height, width):
        raise UserError(f"all frames of a video must have the same size: got {frame.shape[:2]} "
                        f"after ({height}, {width})")
    if frame.shape[0] % 2 or frame.shape[1] % 2:
        raise UserError(f"frame size {frame.shape[0]}x{frame.shape[1]} (HxW) is odd; yuv420p "
                        "video needs even height and width: crop or pad by one pixel")


def sibling_temp_path(path: PathLike) -> str:
    """Creates an empty, uniquely named file next to `path` with the same suffix.

    Write there, then `os.replace` it onto `path`, so that `path` is never half-written.
    Temporaries of `path` left by a killed run are removed first. The file is created with
    `open` (not `mkstemp`) so that it gets the usual permissions.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"cannot write {path}: folder {folder} does not exist")
    name, suffix = os.path.splitext(os.path.basename(path))
    stale = re.compile(rf"\.{re.escape(name)}\.[0-9a-f]{{32}}\.tmp{re.escape(suffix)}")
    for entry in os.listdir(folder):
        if stale.fullmatch(entry):
            os.remove(os.path.join(folder, entry))
    temp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp{suffix}")
    with open(temp, "xb"):
        return temp


class VideoWriter:
    """Streams frames into a video file; the file appears under its name only on success.

    Use as a context manager: `with VideoWriter(path, fps) as w: w.write(frame)`. On an
    exception inside the block the partial file is deleted.
    """

    def __init__(self, path: PathLike, fps: float = 24.0, quality: int = 10) -> None:
        suffix = os.path.splitext(path)[1].lower()
        if suffix not in _FORMATS:
            raise UserError(f"cannot write video {path}: unknown suffix {suffix!r}; use one of "
                            f"{', '.join(_FORMATS)}")
        if not fps > 0:
            raise UserError(f"frame rate must be positive, got {fps}")
        self._path = path
        self._format, self._codec = _FORMATS[suffix]
        self._rate = fractions.Fraction(fps).limit_denominator(_MAX_RATE_DENOMINATOR)
        self._options = _encoder_options(self._codec, quality)
        self._temp: str | None = None
        self._container = None
        self._stream = None
        self._shape: tuple[int, int] | None = None
        self.num_frames = 0

    def __enter__(self) -> VideoWriter:
        self._temp = sibling_temp_path(self._path)
        try:
            self._container = av.open(self._temp, "w", format=self._format)
        except (av.FFmpegError, OSError) as e:
            self._discard()
            raise UserError(f"cannot write video {self._path}: {e}") from e
        return self

    def write(self, frame: np.ndarray) -> None:
        """Appends one (H, W, 3) uint8 RGB frame."""
        if self._container is None:
            raise RuntimeError("VideoWriter.write called outside its `with` block")
        _check_frame(frame, *(self._shape or (None, None)))
        if self._stream is None:
            self._shape = frame.shape[:2]
            self._stream = self._container.add_stream(
                self._codec, rate=self._rate, options=self._options)
            self._stream.height, self._stream.width = self._shape
            self._stream.pix_fmt = _PIXEL_FORMAT
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video_frame = video_frame.reformat(format=_PIXEL_FORMAT,
                                           interpolation=_ENCODE_INTERPOLATION)
        self._container.mux(self._stream.encode(video_frame))
        self.num_frames += 1

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if exc_type is None and self._stream is None:
            self._discard()
            raise UserError(f"no frames were given for video {self._path}")
        if exc_type is not None:
            self._discard()
            return
        try:
            self._container.mux(self._stream.encode(None))
            self._container.close()
        except BaseException:
            self._discard()
            raise
        os.replace(self._temp, self._path)

    def _discard(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except av.FFmpegError:
                pass
        if self._temp is not None and os.path.exists(self._temp):
            os.remove(self._temp)


def write_video(path: PathLike, frames: np.ndarray, fps: float = 24.0, quality: int = 10) -> None:
    """Writes (T, H, W, 3) uint8 RGB frames; .mp4/.mkv: H.264 (quality = crf), .webm: VP9.

    H and W must be even (4:2:0 chroma). The file is written under a temporary name and
    renamed, so a crash never leaves a half-written video behind.
    """
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[0] == 0:
        shape = getattr(frames, "shape", type(frames).__name__)
        raise UserError(f"frames must be a (T, H, W, 3) uint8 array with T >= 1, got {shape}")
    _check_frame(frames[0], None, None)
    with VideoWriter(path, fps, quality) as writer:
        for frame in frames:
            writer.write(frame)


def _open(path: PathLike) -> av.container.InputContainer:
    try:
        container = av.open(os.fspath(path), "r")
    except (av.FFmpegError, OSError) as e:
        raise UnreadableVideoError(f"cannot open video {path}: {e}") from e
    if not container.streams.video:
        container.close()
        raise UnreadableVideoError(f"{path} holds no video stream")
    return container


def read_video(path: PathLike, size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """Yields the frames of a video as (H, W, 3) uint8 RGB arrays.

    `size` = (height, width) resizes while converting from YUV (area averaging): for HD
    input about 3x faster than decoding at full size and resizing afterwards.
    Raises UnreadableVideoError at once when the file cannot be opened (an mp4 truncated
    before its index) or has no video stream, and while iterating when decoding fails
    part-way (a file truncated or corrupted after its index). The frame count of the index
    is not enforced: edit lists of validly cut files make fewer frames come out.
    """
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise UserError(f"read size must be (height, width) in pixels, got {size}")
    return _decode(path, _open(path), size)


def _decode(path: PathLike, container: av.container.InputContainer,
            size: tuple[int, int] | None) -> Iterator[np.ndarray]:
    height, width = size if size is not None else (None, None)
    interpolation = _DECODE_INTERPOLATION if size is None else _RESIZE_INTERPOLATION
    with container:
        stream = container.streams.video[0]
        decoded = 0
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24", width=width, height=height,
                                       interpolation=interpolation)
                decoded += 1
        except (av.FFmpegError, OSError) as e:
            raise UnreadableVideoError(
                f"video {path} is corrupt or truncated: decoding failed after frame {decoded}: "
                f"{e}") from e


def video_info(path: PathLike) -> VideoInfo:
    """Frame rate, size and frame count (from the container index, else from the duration)."""
    with _open(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise UnreadableVideoError(f"video {path} declares no frame rate")
        fps = float(rate)
        num_frames, estimated = stream.frames, False
        if num_frames <= 0:
            estimated = True
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                seconds = container.duration / av.time_base
            else:
                raise UnreadableVideoError(f"video {path} declares neither a frame count nor a "
                                           "duration")
            num_frames = round(seconds * fps)
        return VideoInfo(fps=fps, height=stream.codec_context.height,
                         width=stream.codec_context.width, num_frames=num_frames,
                         num_frames_estimated=estimated)


def write_gif(path: PathLike, frames: np.ndarray, fps: float = 10.0) -> None:
    """Writes (T, H, W, 3) uint8 RGB frames as a looping GIF (atomically)."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[0] == 0:
        shape = getattr(frames, "shape", type(frames).__name__)
        raise UserError(f"frames must be a (T, H, W, 3) uint8 array with T >= 1, got {shape}")
    if frames.dtype != np.uint8 or frames.shape[3] != 3:
        raise UserError(f"GIF frames must be uint8 RGB (T, H, W, 3), got {frames.dtype} "
                        f"{frames.shape}")
    if not fps > 0:
        raise UserError(f"frame rate must be positive, got {fps}")
    images = [Image.fromarray(frame) for frame in frames]
    temp = sibling_temp_path(path)
    try:
        images[0].save(temp, format="GIF", save_all=True, append_images=images[1:],
                       duration=round(1000 / fps), loop=0)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)
