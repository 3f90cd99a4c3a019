"""Shot detection on a rendered synthetic episode (H.264 mp4) with known cut positions."""
import numpy as np
import pytest

from ganime_jax.data.shot_detection import ShotDetector, cuts_to_shots, detect_shots
from ganime_jax.data.synthetic_anime import SyntheticAnimeConfig, render_episode
from ganime_jax.data.video_io import UnreadableVideoError, read_video, write_video

TOLERANCE = 1  # frames


@pytest.fixture(scope="module")
def episode(tmp_path_factory):
    episode = render_episode(seed=7, num_shots=8, config=SyntheticAnimeConfig(), min_drawings=10, max_drawings=24)
    path = tmp_path_factory.mktemp("shots") / "episode.mp4"
    write_video(path, episode.frames, fps=24.0)
    return episode, path


def _precision_recall(found, true):
    hits = sum(any(abs(f - t) <= TOLERANCE for f in found) for t in true)
    correct = sum(any(abs(f - t) <= TOLERANCE for t in true) for f in found)
    return correct / max(len(found), 1), hits / max(len(true), 1)


def test_every_cut_found_and_no_false_cut(episode):
    truth, path = episode
    shots = detect_shots(path)
    assert shots[0][0] == 0 and shots[-1][1] == len(truth.frames)
    assert all(a[1] == b[0] for a, b in zip(shots[:-1], shots[1:]))
    found = [start for start, _ in shots[1:]]
    precision, recall = _precision_recall(found, truth.cut_frames)
    print(f"shot detection: {len(truth.cut_frames)} true cuts, {len(found)} found, "
          f"precision {precision:.3f}, recall {recall:.3f} (+-{TOLERANCE} frame)")
    assert (precision, recall) == (1.0, 1.0)
    assert len(found) == len(truth.cut_frames)


def test_streaming_detector_matches_detect_shots(episode):
    _, path = episode
    detector, cuts = ShotDetector(fps=24.0), []
    for frame in read_video(path):
        cuts += detector.push(frame)
    cuts += detector.finish()
    assert cuts == sorted(cuts)
    assert cuts_to_shots(cuts, detector.num_frames) == detect_shots(path)


def test_a_static_video_is_one_shot(tmp_path):
    path = tmp_path / "still.mp4"
    write_video(path, np.full((30, 32, 64, 3), 90, np.uint8))
    assert detect_shots(path) == [(0, 30)]


def test_cuts_to_shots_ignores_out_of_range_and_duplicates():
    assert cuts_to_shots([5, 0, 5, 12, 20], 12) == [(0, 5), (5, 12)]


@pytest.mark.parametrize("content", [b"", b"this is not a video" * 50])
def test_unreadable_file_raises(tmp_path, content):
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    with pytest.raises(UnreadableVideoError):
        detect_shots(path)
