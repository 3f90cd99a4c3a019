"""Video and GIF files: round trips, atomic writes, clear errors for bad input and bad files."""
import os

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from ganime_jax.data import video_io
from ganime_jax.data.video_io import UnreadableVideoError, VideoWriter
from ganime_jax.errors import UserError

T, H, W = 12, 32, 48


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """A smooth gradient with a flat-coloured, outlined block moving across it."""
    rows = np.linspace(40, 200, H)[:, None, None]
    cols = np.linspace(0, 120, W)[None, :, None]
    base = (rows + cols * np.array([1.0, 0.3, -0.2])).clip(0, 255)
    clip = np.repeat(base[None], T, axis=0).astype(np.uint8)
    for t in range(T):
        x = 4 + 2 * t
        clip[t, 8:24, x:x + 12] = (30, 30, 40)
        clip[t, 9:23, x + 1:x + 11] = (230, 120, 60)
    return clip


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int32) - b.astype(np.int32)).mean())


@pytest.mark.parametrize("suffix,tolerance", [(".mp4", 3.0), (".mkv", 3.0), (".webm", 3.0),
                                              (".avi", 5.0)])
def test_round_trip_stays_close(tmp_path, frames, suffix, tolerance):
    path = str(tmp_path / f"clip{suffix}")
    video_io.write_video(path, frames, fps=24.0)
    decoded = np.stack(list(video_io.read_video(path)))
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert _mae(decoded, frames) < tolerance
    # Every frame must come back in its own place (no dropped or repeated frames).
    for t in range(T):
        errors = [_mae(decoded[t], frames[s]) for s in range(T)]
        assert int(np.argmin(errors)) == t
    info = video_io.video_info(path)
    assert (info.height, info.width) == (H, W)
    assert info.fps == pytest.approx(24.0)
    assert info.num_frames == T
    assert sorted(os.listdir(tmp_path)) == [f"clip{suffix}"]


def test_read_with_resize_matches_resize_after_reading(tmp_path, frames):
    path = tmp_path / "clip.mp4"  # a pathlib.Path works as well as a str
    video_io.write_video(path, frames)
    full = list(video_io.read_video(path))
    small = np.stack(list(video_io.read_video(path, size=(16, 24))))
    expected = np.stack([cv2.resize(f, (24, 16), interpolation=cv2.INTER_AREA) for f in full])
    assert small.shape == (T, 16, 24, 3)
    assert _mae(small, expected) < 1.0
    with pytest.raises(UserError, match="height, width"):
        video_io.read_video(path, size=(0, 24))


def test_flat_colour_is_not_biased(tmp_path):
    flat = np.empty((4, H, W, 3), np.uint8)
    flat[:] = (200, 50, 90)
    path = str(tmp_path / "flat.mp4")
    video_io.write_video(path, flat)
    decoded = np.stack(list(video_io.read_video(path)))
    assert np.abs(decoded.astype(int) - flat).max() <= 1


def test_fractional_frame_rate(tmp_path, frames):
    path = str(tmp_path / "ntsc.mp4")
    video_io.write_video(path, frames[:3], fps=24000 / 1001)
    assert video_io.video_info(path).fps == pytest.approx(23.976, abs=1e-3)


def test_streaming_writer_discards_partial_file_on_error(tmp_path, frames):
    path = str(tmp_path / "partial.mp4")
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(path, fps=24.0) as writer:
            writer.write(frames[0])
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    with pytest.raises(UserError, match="same size"):
        with VideoWriter(path) as writer:
            writer.write(frames[0])
            writer.write(frames[0, :, :-2])
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("bad,message", [
    (np.zeros((2, 32, 48, 3), np.float32), "uint8"),
    (np.zeros((2, 32, 48), np.uint8), r"\(T, H, W, 3\)"),
    (np.zeros((0, 32, 48, 3), np.uint8), "T >= 1"),
    (np.zeros((2, 32, 48, 4), np.uint8), r"\(H, W, 3\)"),
    (np.zeros((2, 33, 48, 3), np.uint8), "odd"),
])
def test_bad_frames_raise_user_error(tmp_path, bad, message):
    with pytest.raises(UserError, match=message):
        video_io.write_video(str(tmp_path / "bad.mp4"), bad)
    assert os.listdir(tmp_path) == []


def test_bad_paths_raise_user_error(tmp_path, frames):
    with pytest.raises(UserError, match="unknown suffix"):
        video_io.write_video(str(tmp_path / "clip.xyz"), frames)
    with pytest.raises(UserError, match="does not exist"):
        video_io.write_video(str(tmp_path / "missing" / "clip.mp4"), frames)
    with pytest.raises(UserError, match="positive"):
        video_io.write_video(str(tmp_path / "clip.mp4"), frames, fps=0)


def _read_all(path: str) -> int:
    return sum(1 for _ in video_io.read_video(path))


def test_text_file_and_missing_file_are_unreadable(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    for path in (str(text), str(tmp_path / "absent.mp4")):
        with pytest.raises(UnreadableVideoError, match=os.path.basename(path)):
            video_io.read_video(path)  # fails on the call, before any iteration
        with pytest.raises(UnreadableVideoError):
            video_io.video_info(path)


def test_truncated_mp4_is_unreadable(tmp_path, frames):
    path = str(tmp_path / "full.mp4")
    video_io.write_video(path, frames)
    data = open(path, "rb").read()
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(UnreadableVideoError) as error:
        _read_all(str(truncated))
    assert "\n" not in str(error.value) and "cut.mp4" in str(error.value)


def test_truncated_streamable_mp4_fails_part_way(tmp_path, frames):
    """With the index at the front (faststart), decoding starts and must fail cleanly."""
    path = str(tmp_path / "fast.mp4")
    with av.open(path, "w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=24)
        stream.height, stream.width, stream.pix_fmt = H, W, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    data = open(path, "rb").read()
    truncated = tmp_path / "fast_cut.mp4"
    truncated.write_bytes(data[:int(len(data) * 0.6)])
    with pytest.raises(UnreadableVideoError, match="fast_cut.mp4"):
        _read_all(str(truncated))


def test_gif(tmp_path, frames):
    path = str(tmp_path / "clip.gif")
    video_io.write_gif(path, frames, fps=10.0)
    assert sorted(os.listdir(tmp_path)) == ["clip.gif"]
    with Image.open(path) as gif:
        assert gif.size == (W, H) and gif.n_frames == T
        assert gif.info["duration"] == 100
        gif.seek(T // 2)
        middle = np.asarray(gif.convert("RGB"))
    assert _mae(middle, frames[T // 2]) < 8.0
    with pytest.raises(UserError, match="uint8"):
        video_io.write_gif(path, frames.astype(np.float32), fps=10.0)
