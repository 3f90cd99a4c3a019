"""Synthetic anime: determinism, held frames, real motion, detectable cuts, episode files."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scenedetect import ContentDetector, detect

from data_prep.render_episodes import render_episode_file
from ganime_jax.data import synthetic_anime as sa
from ganime_jax.data.video_io import read_video, video_info
from ganime_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = sa.SyntheticAnimeConfig()
SMALL = sa.SyntheticAnimeConfig(height=32, width=48)


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


@pytest.fixture(scope="module")
def shots() -> list[sa.Shot]:
    return [sa.render_shot(seed, 24, CONFIG) for seed in range(12)]


@pytest.fixture(scope="module")
def episode() -> sa.Episode:
    return sa.render_episode(3, 6, CONFIG, min_drawings=16, max_drawings=30)


def test_shapes_dtypes_and_config_size():
    shot = sa.render_shot(0, 10, SMALL)
    assert shot.frames.dtype == np.uint8 and shot.frames.shape[1:] == (32, 48, 3)
    assert shot.held.dtype == bool and shot.held.shape == (len(shot.frames),)
    assert len(shot.frames) >= 10 and int((~shot.held).sum()) == 10 and not shot.held[0]


def test_same_seed_same_shot_other_seed_other_shot(shots):
    again = sa.render_shot(0, 24, CONFIG)
    np.testing.assert_array_equal(again.frames, shots[0].frames)
    np.testing.assert_array_equal(again.held, shots[0].held)
    assert _mae(shots[0].frames[0], shots[1].frames[0]) > 20.0


def test_held_flags_mark_exact_duplicates(shots):
    holds = []
    for shot in shots:
        repeats = np.all(shot.frames[1:] == shot.frames[:-1], axis=(1, 2, 3))
        np.testing.assert_array_equal(shot.held, np.concatenate([[False], repeats]))
        starts = np.flatnonzero(~shot.held)
        holds += list(np.diff(np.append(starts, len(shot.frames))))
    assert set(holds) == {1, 2, 3}


def test_motion_is_not_a_cross_fade(shots):
    """No blend of the first and last frame comes near the middle frame of a shot."""
    for shot in shots:
        first, last = shot.frames[0].astype(np.float64), shot.frames[-1].astype(np.float64)
        middle = shot.frames[len(shot.frames) // 2]
        best = min(_mae((1 - a) * first + a * last, middle) for a in np.linspace(0, 1, 21))
        assert best > 5.0


def test_background_pans():
    """With one speck of a prop, the frame changes only when the camera pans."""
    speck = dict(characters=(0, 0), props=(1, 1), prop_size=(0.02, 0.02))
    panning = sa.render_shot(5, 30, sa.SyntheticAnimeConfig(**speck)).frames
    fixed = sa.render_shot(5, 30, sa.SyntheticAnimeConfig(**speck, pan_speed=(0.0, 0.0),
                                                          max_vertical_pan=0.0)).frames
    assert _mae(panning[0], panning[-1]) > 2.0
    assert _mae(fixed[0], fixed[-1]) < 0.5


def test_episode_bounds_and_clear_cuts(episode):
    bounds = episode.shot_bounds
    assert bounds[0][0] == 0 and bounds[-1][1] == len(episode.frames) and len(bounds) == 6
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert episode.cut_frames == [start for start, _ in bounds[1:]]
    assert all(end - start >= 16 for start, end in bounds)
    frames = episode.frames
    steps = [sa.cut_score(frames[i - 1], frames[i]) for i in range(1, len(frames))]
    for i, score in enumerate(steps, start=1):
        if i in episode.cut_frames:
            assert score >= CONFIG.min_cut_score
        else:
            assert score <= CONFIG.max_shot_score


def test_episode_by_frame_count_streams_exact_length():
    shots = list(sa.iter_episode_shots(1, None, SMALL, 8, 12, num_frames=100))
    assert sum(len(s.frames) for s in shots) == 100
    assert all(len(s.frames) >= 8 for s in shots) and len(shots) > 2


@pytest.mark.parametrize("kwargs", [dict(height=8), dict(hold_probabilities=(0.5, 0.5, 0.5)),
                                    dict(characters=(2, 1)), dict(characters=(0, 2),
                                                                   props=(0, 1))])
def test_bad_config_raises_user_error(kwargs):
    with pytest.raises(UserError):
        sa.SyntheticAnimeConfig(**kwargs)


def test_bad_episode_arguments_raise_user_error():
    with pytest.raises(UserError):
        sa.render_episode(0, 2, SMALL, min_drawings=5, max_drawings=4)
    with pytest.raises(UserError):
        sa.render_shot(0, 0, SMALL)


def test_cuts_survive_h264_and_scenedetect(tmp_path):
    """PySceneDetect's default ContentDetector finds exactly the true cuts in the mp4."""
    path = str(tmp_path / "episode.mp4")
    cuts = render_episode_file(path, seed=11, num_frames=240, config=CONFIG, fps=24.0)
    sidecar = json.loads((tmp_path / "episode.json").read_text())
    assert sidecar["cut_frames"] == cuts and sidecar["num_frames"] == 240 and len(cuts) >= 3
    assert video_info(path).num_frames == 240
    found = [scene[0].frame_num for scene in detect(path, ContentDetector())[1:]]
    assert len(found) == len(cuts)
    assert all(abs(f - c) <= 1 for f, c in zip(found, cuts))
    frames = np.stack(list(read_video(path)))
    starts = [0, *cuts]
    for i in range(1, len(frames)):
        if i not in starts:
            assert sa.cut_score(frames[i - 1], frames[i]) < 20.0


def test_cli_writes_episodes(tmp_path):
    out = tmp_path / "eps"
    command = [sys.executable, "-m", "data_prep.render_episodes", f"--output_dir={out}",
               "--num_episodes=2", "--minutes=0.03", "--seed=4", "--height=32", "--width=48"]
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == ["episode_0000.json", "episode_0000.mp4",
                                       "episode_0001.json", "episode_0001.mp4"]
    meta = [json.loads((out / f"episode_000{i}.json").read_text()) for i in range(2)]
    assert meta[0]["num_frames"] == 43 and meta[0]["seed"] != meta[1]["seed"]
    bad = subprocess.run([*command[:4], "--minutes=0.03", "--height=33"], capture_output=True,
                         text=True, check=False, cwd=ROOT)
    assert bad.returncode == 2 and "odd" in bad.stderr and "Traceback" not in bad.stderr
