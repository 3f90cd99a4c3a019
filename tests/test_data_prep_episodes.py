"""data_prep.episodes end to end on tiny rendered episodes, a corrupt mp4 and a non-video file."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_prep import episode_file, episodes
from ganime_jax.data.staged_clips import ClipSettings
from ganime_jax.data import tfds_io
from ganime_jax.data.synthetic_anime import SyntheticAnimeConfig, iter_episode_shots
from ganime_jax.data.video_io import write_video
from ganime_jax.errors import UserError

CLIP = ClipSettings(height=64, width=128, min_frames=6, max_frames=10)
NAMES = ("ep0.mp4", "ep1.mkv", "ep2.mp4")
FAST = SyntheticAnimeConfig(speed=(0.02, 0.03), pan_speed=(0.01, 0.02))
MARGIN = 0.014  # drawings differ by at least this much: 1.4 x the 0.01 held threshold


def smallest_drawing_change(frames, held):
    """Smallest mean |difference| ([0, 1] pixels) between consecutive distinct drawings."""
    firsts = np.flatnonzero(~np.asarray(held)).tolist()
    pairs = zip(firsts[:-1], firsts[1:])
    return min(np.abs(frames[a].astype(np.int32) - frames[b]).mean() / 255.0 for a, b in pairs)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Three episodes (4 shots each), a truncated mp4 and a text file; plus the true counts.

    Only episodes whose drawings all differ clearly are used, so that the held frames are
    exactly the frames the renderer repeated.
    """
    folder = tmp_path_factory.mktemp("videos")
    truth = {"shots": 0, "frames": 0, "held": 0}
    episodes_ = (list(iter_episode_shots(seed, 4, FAST, min_drawings=9, max_drawings=16)) for seed in range(16))
    clear = (e for e in episodes_ if min(smallest_drawing_change(s.frames, s.held) for s in e) >= MARGIN)
    for name, shots in zip(NAMES, clear):
        write_video(folder / name, np.concatenate([s.frames for s in shots]), fps=24.0)
        truth["shots"] += len(shots)
        truth["frames"] += sum(len(s.frames) for s in shots)
        truth["held"] += sum(int(s.held.sum()) for s in shots)
    assert all((folder / name).exists() for name in NAMES)
    good = (folder / NAMES[0]).read_bytes()
    (folder / "broken.mp4").write_bytes(good[: len(good) // 2])
    (folder / "notes.txt").write_text("not a video")
    return folder, truth


@pytest.fixture(scope="module")
def built(inputs, tmp_path_factory):
    folder, _ = inputs
    data_root = tmp_path_factory.mktemp("data")
    settings = episodes.PrepSettings(clip=CLIP, test_fraction=0.3, seed=0, workers=2)
    summary = episodes.prepare_episodes([str(folder)], str(data_root), "toy", settings)
    print(summary.format())
    return data_root, summary


def test_summary_counts_and_skips(inputs, built):
    _, truth = inputs
    _, summary = built
    assert summary.files_read == 3 and summary.files_reused == 0
    reasons = {path.rsplit("/", 1)[-1]: reason for path, reason in summary.files_skipped.items()}
    assert set(reasons) == {"broken.mp4", "notes.txt"}
    assert "unreadable" in reasons["broken.mp4"] and "not a video" in reasons["notes.txt"]
    c = summary.counts
    assert c["frames_read"] == truth["frames"]
    assert c["shots"] == truth["shots"]
    assert c["frames_held"] == truth["held"]  # through H.264 and resizing
    assert c["clip_frames"] + c["frames_leftover"] + c["frames_held"] == c["frames_read"]
    text = summary.format()
    assert "broken.mp4" in text and "notes.txt" in text and "frames dropped as held" in text


def test_datasets_readable_and_split_by_source(built):
    data_root, summary = built
    sources = {}
    for split in ("train", "test"):
        clips = tfds_io.open_split(str(data_root), "toy_clips", split)
        frames = tfds_io.open_split(str(data_root), "toy_frames", split)
        assert len(clips) == summary.split_clips[split] > 0
        lengths = [clips[i]["n_frames"] for i in range(len(clips))]
        assert all(CLIP.min_frames <= n <= CLIP.max_frames for n in lengths)
        assert clips[0]["frames"].shape[1:] == (64, 128, 3) and clips[0]["frames"].dtype == np.uint8
        assert len(frames) == sum(lengths)
        assert frames[0]["frame"].shape == (64, 128, 3)
        sources[split] = {clips[i]["source"] for i in range(len(clips))}
        assert {frames[i]["source"] for i in range(len(frames))} == sources[split]
        assert sources[split] == set(summary.split_sources[split])
    assert not sources["train"] & sources["test"]
    assert sources["train"] | sources["test"] == set(NAMES)
    assert sum(summary.split_clips.values()) == summary.counts["clips"]
    stored = tfds_io.read_metadata(str(data_root), "toy_clips")["summary"]
    assert stored["counts"] == summary.counts and set(stored["files_skipped"]) == set(summary.files_skipped)
    assert not episodes.staging_dir(str(data_root), "toy").exists()


def test_resume_reuses_staged_files(inputs, tmp_path, monkeypatch):
    folder, _ = inputs
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in NAMES:
        shutil.copy(folder / name, videos / name)
    settings = episodes.PrepSettings(clip=CLIP, test_fraction=0.3, workers=1)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(episodes, "write_staged_datasets", interrupted)
        with pytest.raises(KeyboardInterrupt):
            episodes.prepare_episodes([str(videos)], str(tmp_path), "toy", settings)
    staged = sorted(episodes.staging_dir(str(tmp_path), "toy").glob("*.npz"))
    assert len(staged) == 3
    staged[0].unlink()  # as if the run had stopped before the last file was done

    decoded = []
    real_cut_file = episode_file.cut_file
    monkeypatch.setattr(episode_file, "cut_file",
                        lambda path, s, info: decoded.append(path) or real_cut_file(path, s, info))
    summary = episodes.prepare_episodes([str(videos)], str(tmp_path), "toy", settings)
    assert len(decoded) == 1 and summary.files_reused == 2 and summary.files_read == 3
    assert tfds_io.dataset_exists(str(tmp_path), "toy_clips")


def test_no_usable_clip_is_a_user_error(inputs, tmp_path):
    folder, _ = inputs
    with pytest.raises(UserError, match="usable clips"):
        episodes.prepare_episodes([str(folder / "broken.mp4"), str(folder / "notes.txt")], str(tmp_path), "none")
    with pytest.raises(UserError, match="usable clips"):
        episodes.prepare_episodes([str(folder / "notes.txt")], str(tmp_path), "none")
    assert not tfds_io.dataset_exists(str(tmp_path), "none_clips")
    with pytest.raises(UserError, match="matches no file"):
        episodes.prepare_episodes([str(tmp_path / "*.webm")], str(tmp_path), "none")


def _cli(*args):
    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "data_prep.episodes", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=repo)


def test_cli_builds_and_reports_errors_in_one_line(inputs, tmp_path):
    folder, _ = inputs
    assert "--held_threshold" in _cli("--help").stdout
    result = _cli(f"--input={folder}/*.mp4", f"--input={folder / 'ep1.mkv'}", f"--data_root={tmp_path}",
                  "--name=cli", "--min_frames=6", "--max_frames=10", "--workers=1", "--test_fraction=0.5")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "files skipped:            1" in result.stdout and "broken.mp4" in result.stdout
    assert tfds_io.dataset_exists(str(tmp_path), "cli_clips") and tfds_io.dataset_exists(str(tmp_path), "cli_frames")
    result = _cli(f"--input={tmp_path / 'missing'}", f"--data_root={tmp_path}", "--name=x")
    assert result.returncode != 0 and result.stderr.strip().splitlines()[-1].startswith("error: --input")


def test_a_truncated_mkv_keeps_its_clips_with_a_note(inputs, tmp_path):
    folder, _ = inputs
    whole = folder / "ep1.mkv"  # Matroska declares a duration, not a frame count
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    stages = tmp_path / "stages"
    stages.mkdir()
    full = episode_file.stage_file(str(whole), str(stages), CLIP)
    part = episode_file.stage_file(str(cut), str(stages), CLIP)
    assert full.short_read is None and part.skip_reason is None
    assert 0 < part.counts["frames_read"] < 0.8 * full.counts["frames_read"]
    assert part.short_read == (f"decoded {part.counts['frames_read']} of the "
                               f"{full.counts['frames_read']} frames its header declares: "
                               "probably truncated (its clips are kept)")
    again = episode_file.stage_file(str(cut), str(stages), CLIP)
    assert again.reused and again.short_read == part.short_read
    summary = episodes.PrepSummary(name="x", files_short={str(cut): part.short_read})
    assert f"  files read in part:       1\n    {cut}: decoded" in summary.format()
    assert episode_file.short_read(98, 100) is None and episode_file.short_read(9, 10) is None
    assert episode_file.short_read(97, 100) is not None


def test_cli_settings_errors_are_one_line_with_status_2(tmp_path):
    cases = [(("--workers=0",), "error: workers must be >= 1, got 0."),
             (("--min_frames=30", "--max_frames=10"),
              "error: need 1 <= min_frames <= max_frames, got 30..10."),
             (("--height=0",), "error: frame size must be positive, got 0x128.")]
    for extra, message in cases:
        result = _cli(f"--input={tmp_path}", f"--data_root={tmp_path / 'd'}", "--name=x", *extra)
        assert (result.returncode, result.stderr.strip().splitlines()) == (2, [message])
    result = _cli(f"--input={tmp_path}", f"--data_root={tmp_path / 'd'}")
    assert (result.returncode, result.stderr.strip()) == (
        2, "error: --name is required; see --helpshort.")
    (tmp_path / "a_file").write_text("")
    result = _cli(f"--input={tmp_path}", f"--data_root={tmp_path / 'a_file' / 'd'}", "--name=x")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: --data_root {tmp_path / 'a_file' / 'd'} lies under {tmp_path / 'a_file'}, "
        "which is a file; pass a path under a folder."]
