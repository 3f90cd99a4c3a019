"""clip_ops: held-frame removal (also through H.264), clip splitting, resizing, source splits."""
import numpy as np
import pytest

from ganime_jax.data import clip_ops
from ganime_jax.data.synthetic_anime import SyntheticAnimeConfig, render_shot
from ganime_jax.data.video_io import read_video, write_video
from ganime_jax.errors import UserError

THRESHOLD = 0.01
# Fast motion, so that consecutive drawings differ clearly; shots whose drawings still differ by
# less than MARGIN are not used (a drawing that barely changes is, by definition, held).
FAST = SyntheticAnimeConfig(speed=(0.02, 0.03), pan_speed=(0.01, 0.02))
MARGIN = 1.4 * THRESHOLD


def smallest_drawing_change(frames, held):
    """Smallest mean |difference| ([0, 1] pixels) between consecutive distinct drawings."""
    firsts = np.flatnonzero(~np.asarray(held)).tolist()
    pairs = zip(firsts[:-1], firsts[1:])
    return min(np.abs(frames[a].astype(np.int32) - frames[b]).mean() / 255.0 for a, b in pairs)


def _drawn_on(repeats, seed=0, shape=(16, 32, 3)):
    """Random drawings, drawing i shown repeats[i] times; returns frames and first indices."""
    rng = np.random.default_rng(seed)
    drawings = rng.integers(0, 256, size=(len(repeats), *shape), dtype=np.uint8)
    frames = np.repeat(drawings, repeats, axis=0)
    firsts = np.cumsum([0, *repeats[:-1]])
    return frames, firsts


def test_drop_held_frames_keeps_first_of_each_drawing():
    frames, firsts = _drawn_on([2, 3, 1, 2, 2, 3])
    kept, index = clip_ops.drop_held_frames(frames, THRESHOLD)
    np.testing.assert_array_equal(index, firsts)
    np.testing.assert_array_equal(kept, frames[firsts])


def test_held_filter_compares_with_last_kept_frame():
    # Each frame is 1/255 brighter than the previous one: below the threshold step by step, but
    # the difference to the last kept frame crosses it every third frame.
    frames = np.stack([np.full((4, 4, 3), 100 + i, np.uint8) for i in range(10)])
    _, index = clip_ops.drop_held_frames(frames, THRESHOLD)
    np.testing.assert_array_equal(index, [0, 3, 6, 9])


def test_streaming_filter_matches_batch_and_resets():
    frames, _ = _drawn_on([3, 2, 2, 1, 3], seed=1)
    held_filter = clip_ops.HeldFrameFilter(THRESHOLD)
    streamed = [i for i, frame in enumerate(frames) if held_filter.keep(frame)]
    np.testing.assert_array_equal(streamed, clip_ops.drop_held_frames(frames, THRESHOLD)[1])
    assert not held_filter.keep(frames[-1])
    held_filter.reset()
    assert held_filter.keep(frames[-1])


@pytest.fixture(scope="module")
def shots_on_twos_and_threes():
    shots = [render_shot(seed, num_drawings=8, config=FAST) for seed in range(12)]
    clear = [shot for shot in shots if smallest_drawing_change(shot.frames, shot.held) >= MARGIN]
    assert len(clear) >= 4, "the synthetic generator no longer draws clearly distinct drawings"
    return clear[:4]


def test_synthetic_shots_really_hold_frames(shots_on_twos_and_threes):
    for shot in shots_on_twos_and_threes:
        held = np.asarray(shot.held)
        assert not held[0] and held.sum() >= len(held) // 3


@pytest.mark.parametrize("through_h264", [False, True])
def test_drop_exactly_the_held_frames_of_synthetic_shots(shots_on_twos_and_threes, tmp_path, through_h264):
    for i, shot in enumerate(shots_on_twos_and_threes):
        frames = np.asarray(shot.frames)
        if through_h264:
            path = tmp_path / f"shot{i}.mp4"
            write_video(path, frames, fps=24.0)
            frames = np.stack(list(read_video(path)))
            assert frames.shape == np.asarray(shot.frames).shape
        _, index = clip_ops.drop_held_frames(frames, THRESHOLD)
        np.testing.assert_array_equal(index, np.flatnonzero(~np.asarray(shot.held)))


def _exact_cover_exists(n, lo, hi):
    return any(k * lo <= n <= k * hi for k in range(1, n + 1))


@pytest.mark.parametrize("lo,hi", [(15, 25), (20, 20), (3, 4)])
def test_split_into_clips_policy(lo, hi):
    for n in range(0, 120):
        ranges = clip_ops.split_into_clips(n, lo, hi)
        lengths = [end - start for start, end in ranges]
        assert all(lo <= length <= hi for length in lengths)
        assert [start for start, _ in ranges] == [0, *[end for _, end in ranges[:-1]]][: len(ranges)]
        leftover = n - sum(lengths)
        if _exact_cover_exists(n, lo, hi):
            assert leftover == 0 and len(ranges) == -(-n // hi)
            assert max(lengths) - min(lengths) <= 1
        else:
            assert 0 < leftover < lo or n == 0


def test_split_into_clips_rejects_bad_bounds():
    with pytest.raises(UserError):
        clip_ops.split_into_clips(30, 10, 5)


def test_resize_crops_to_aspect_instead_of_stretching():
    frame = np.full((90, 160, 3), 200, np.uint8)  # 16:9 with 5-pixel bands outside a 2:1 crop
    frame[:5] = 0
    frame[-5:] = 0
    out = clip_ops.resize_frames(frame, 16, 32)
    assert out.shape == (16, 32, 3) and out.dtype == np.uint8
    assert (out == 200).all()
    tall = np.full((100, 100, 3), 50, np.uint8)  # 1:1 -> 2:1 crops the height
    tall[:25] = 255
    tall[-25:] = 255
    assert (clip_ops.resize_frames(tall[None], 8, 16) == 50).all()


def test_resize_upscales_with_shape_and_values():
    frames = np.random.default_rng(0).integers(0, 256, (3, 8, 16, 3), dtype=np.uint8)
    out = clip_ops.resize_frames(frames, 64, 128)
    assert out.shape == (3, 64, 128, 3)
    assert abs(float(out.mean()) - float(frames.mean())) < 4.0


def test_assign_splits_by_source():
    sources = [f"ep{i:02d}.mkv" for i in range(20)]
    splits = clip_ops.assign_splits(sources, test_fraction=0.2, seed=3)
    assert set(splits) == set(sources)
    assert sum(v == "test" for v in splits.values()) == 4
    assert clip_ops.assign_splits(sources[::-1], 0.2, 3) == splits
    assert clip_ops.assign_splits(sources, 0.2, 4) != splits
    two = clip_ops.assign_splits(["a", "b"], test_fraction=0.01, seed=0)
    assert sorted(two.values()) == ["test", "train"]
    assert clip_ops.assign_splits(["only"], 0.5, 0) == {"only": "train"}
    with pytest.raises(UserError):
        clip_ops.assign_splits(sources, 0.0, 0)
