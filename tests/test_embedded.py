"""data_prep.embedded: tiny synthetic-anime and Moving MNIST builds are readable datasets."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_prep import render_episodes
from ganime_jax.data import embedded, tfds_io
from ganime_jax.data.synthetic_anime import SyntheticAnimeConfig
from ganime_jax.errors import UserError

ANIME = dict(num_train_episodes=2, num_test_episodes=1, shots_per_episode=2, min_drawings=8, max_drawings=12,
             height=32, width=64, min_frames=5, max_frames=8)
MNIST = dict(num_train_clips=3, num_test_clips=2, num_frames=6, size=32)


def _read_all(data_root, name, split):
    source = tfds_io.open_split(str(data_root), name, split)
    return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def anime_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("anime")
    embedded.ensure_embedded_dataset(str(root), "toon", kind="synthetic_anime", **ANIME)
    return root


def test_synthetic_anime_splits_and_shapes(anime_root):
    sources = {}
    for split in ("train", "test"):
        clips = _read_all(anime_root, "toon_clips", split)
        frames = _read_all(anime_root, "toon_frames", split)
        assert clips and all(c["frames"].shape[1:] == (32, 64, 3) for c in clips)
        assert all(5 <= c["n_frames"] == len(c["frames"]) <= 8 for c in clips)
        assert len(frames) == sum(c["n_frames"] for c in clips)
        assert frames[0]["frame"].shape == (32, 64, 3) and frames[0]["frame"].dtype == np.uint8
        sources[split] = {c["source"] for c in clips}
        for clip in clips:  # held frames were dropped: no two consecutive frames are equal
            assert all((a != b).any() for a, b in zip(clip["frames"][:-1], clip["frames"][1:]))
    assert sources["train"] <= {"episode_0000", "episode_0001"} and sources["test"] == {"episode_0002"}
    metadata = tfds_io.read_metadata(str(anime_root), "toon_clips")
    assert metadata["builder"] == "synthetic_anime" and metadata["settings"]["height"] == 32
    assert metadata["summary"]["frames_held"] > 0
    assert not (anime_root / ".toon.staging").exists()


def test_ensure_skips_existing_and_rejects_other_settings(anime_root, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("rebuilt an existing dataset")

    monkeypatch.setattr(embedded, "iter_episode_shots", fail)
    monkeypatch.setattr(embedded, "write_staged_datasets", fail)
    embedded.ensure_embedded_dataset(str(anime_root), "toon", kind="synthetic_anime", height=32, width=64)
    with pytest.raises(UserError, match="other settings"):
        embedded.ensure_embedded_dataset(str(anime_root), "toon", kind="synthetic_anime", height=64, width=128)
    with pytest.raises(UserError, match="unknown"):
        embedded.ensure_embedded_dataset(str(anime_root), "toon", kind="synthetic_anime", colour="red")
    with pytest.raises(UserError, match="unknown embedded"):
        embedded.ensure_embedded_dataset(str(anime_root), "toon", kind="kinetics")


def test_validation_and_extra_train_episodes_come_after_and_leave_the_others_alone(anime_root, tmp_path):
    embedded.ensure_embedded_dataset(str(tmp_path), "toon", kind="synthetic_anime", **ANIME,
                                     num_validation_episodes=1, num_extra_train_episodes=1)
    def ordered(root, split, sources=None):
        clips = [c for c in _read_all(root, "toon_clips", split) if sources is None or c["source"] in sources]
        return sorted(clips, key=lambda clip: (clip["source"], clip["shot_index"], clip["clip_index"]))

    first_train = {"episode_0000", "episode_0001"}
    for split, sources in (("train", first_train), ("test", None)):
        assert all(np.array_equal(a["frames"], b["frames"]) for a, b in zip(
            ordered(anime_root, split), ordered(tmp_path, split, sources), strict=True))
    validation = _read_all(tmp_path, "toon_clips", "validation")
    assert validation and {c["source"] for c in validation} == {"episode_0003"}
    train_sources = {c["source"] for c in _read_all(tmp_path, "toon_clips", "train")}
    assert train_sources - first_train == {"episode_0004"}
    assert tfds_io.read_metadata(str(tmp_path), "toon_clips")["settings"]["num_extra_train_episodes"] == 1
    assert tfds_io.split_names(str(anime_root), "toon_clips") == ["train", "test"]
    # What a config will build is known before it is built (training checks eval.split so).
    assert embedded.planned_splits("synthetic_anime", **ANIME) == ["train", "test"]
    assert embedded.planned_splits("synthetic_anime", **ANIME, num_validation_episodes=1) == \
        tfds_io.split_names(str(tmp_path), "toon_clips") == ["train", "test", "validation"]
    with pytest.raises(UserError, match="num_validation_episodes=-1"):
        embedded.build_synthetic_anime(str(tmp_path / "bad"), **ANIME, num_validation_episodes=-1)
    with pytest.raises(UserError, match="num_extra_train_episodes=-1"):
        embedded.build_synthetic_anime(str(tmp_path / "bad"), **ANIME, num_extra_train_episodes=-1)


def test_episodes_rendered_in_several_processes_make_the_same_dataset(anime_root, tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "RENDER_PROCESSES", 2)
    monkeypatch.setattr(embedded, "EPISODES_PER_PROCESS", 1)
    spawned = []
    context = embedded.multiprocessing.get_context

    def counting_context(method):
        spawned.append(method)
        return context(method)

    monkeypatch.setattr(embedded.multiprocessing, "get_context", counting_context)
    embedded.ensure_embedded_dataset(str(tmp_path), "toon", kind="synthetic_anime", **ANIME)
    assert spawned == ["spawn"]
    for split in ("train", "test"):
        for kind in ("clips", "frames"):
            built, serial = (_read_all(root, f"toon_{kind}", split) for root in (tmp_path, anime_root))
            assert len(built) == len(serial) > 0
            key = "frames" if kind == "clips" else "frame"
            assert all(np.array_equal(a[key], b[key]) for a, b in zip(built, serial))


def test_a_dataset_built_before_a_setting_existed_has_its_default(anime_root, monkeypatch):
    stored = tfds_io.read_metadata(str(anime_root), "toon_clips")
    del stored["settings"]["num_validation_episodes"]
    monkeypatch.setattr(tfds_io, "read_metadata", lambda *args: stored)
    embedded.ensure_embedded_dataset(str(anime_root), "toon", kind="synthetic_anime",
                                     num_validation_episodes=0)
    with pytest.raises(UserError, match="other settings"):
        embedded.ensure_embedded_dataset(str(anime_root), "toon", kind="synthetic_anime",
                                         num_validation_episodes=2)


def test_moving_mnist_splits_and_shapes(tmp_path):
    embedded.ensure_embedded_dataset(str(tmp_path), "mm", kind="moving_mnist", height=32, width=32,
                                     **{k: v for k, v in MNIST.items() if k != "size"})
    for split, count in (("train", 3), ("test", 2)):
        clips = _read_all(tmp_path, "mm_clips", split)
        frames = _read_all(tmp_path, "mm_frames", split)
        assert len(clips) == count and len(frames) == count * 6
        assert all(c["frames"].shape == (6, 32, 32, 3) and c["n_frames"] == 6 for c in clips)
        assert all(c["frames"].any() for c in clips)
        assert {c["source"] for c in clips} == {f"mm_{split}"}
    with pytest.raises(UserError, match="square"):
        embedded.ensure_embedded_dataset(str(tmp_path), "mm2", kind="moving_mnist", height=32, width=64)
    # Validation clips: new clips (of the training digits); train and test stay as they were.
    embedded.ensure_embedded_dataset(str(tmp_path), "mmv", kind="moving_mnist", **MNIST,
                                     num_validation_clips=2)
    def by_index(name, split):
        return sorted(_read_all(tmp_path, name, split), key=lambda clip: clip["shot_index"])

    for split in ("train", "test"):
        assert all(np.array_equal(a["frames"], b["frames"]) for a, b in zip(
            by_index("mm_clips", split), by_index("mmv_clips", split), strict=True))
    validation = _read_all(tmp_path, "mmv_clips", "validation")
    train = _read_all(tmp_path, "mmv_clips", "train")
    assert len(validation) == 2 and {c["source"] for c in validation} == {"mmv_validation"}
    assert not any(np.array_equal(v["frames"], t["frames"]) for v in validation for t in train)
    assert embedded.planned_splits("moving_mnist", height=32, width=32, **MNIST) == \
        tfds_io.split_names(str(tmp_path), "mm_clips") == ["train", "test"]
    assert embedded.planned_splits("moving_mnist", **MNIST, num_validation_clips=2) == \
        tfds_io.split_names(str(tmp_path), "mmv_clips") == ["train", "test", "validation"]


def test_cli_builds_synthetic_anime(tmp_path):
    args = [f"--{k}={v}" for k, v in ANIME.items()]
    command = [sys.executable, "-m", "data_prep.embedded", "--dataset=synthetic_anime", f"--data_root={tmp_path}",
               "--name=cli", *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-2000:]
    assert tfds_io.split_names(str(tmp_path), "cli_clips") == ["train", "test"]
    assert tfds_io.read_metadata(str(tmp_path), "cli_frames")["settings"]["shots_per_episode"] == 2


def test_output_places_are_checked_before_building(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(UserError, match="data_root .*a_file is a file, not a folder"):
        embedded.ensure_embedded_dataset(str(a_file), "toon", kind="synthetic_anime", **ANIME)
    with pytest.raises(UserError, match="--output_dir .*a_file is a file, not a folder"):
        render_episodes.render_episodes(str(a_file), 1, 4, 0, SyntheticAnimeConfig())
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "data_prep.embedded", "--dataset=bogus",
                             f"--data_root={tmp_path}"], capture_output=True, text=True, cwd=repo)
    assert (result.returncode, result.stderr.strip().splitlines()) == (2, [
        "error: flag --dataset=bogus: value should be one of <moving_mnist|synthetic_anime>; "
        "see --helpshort."])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
