"""TFDS dataset writing/reading: exact round trips, metadata, atomic (re)writes, clear errors."""
import collections
import os

import numpy as np
import pytest

from ganime_jax.data import tfds_io
from ganime_jax.errors import UserError

FRAME_SHAPE = (4, 6, 3)


def make_clips(count: int, seed: int = 0, fail_at: int | None = None):
    """Clips with random content and lengths 1..6; raises at example `fail_at` if given."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        if index == fail_at:
            raise RuntimeError("examples failed mid-way")
        length = int(rng.integers(1, 7))
        yield {
            "frames": rng.integers(0, 256, (length, *FRAME_SHAPE), dtype=np.uint8),
            "n_frames": length,
            "source": f"episode_{index % 3}.mkv",
            "shot_index": index // 2,
            "clip_index": index % 2,
        }


def make_frames(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for index in range(count):
        yield {
            "frame": rng.integers(0, 256, FRAME_SHAPE, dtype=np.uint8),
            "source": f"ep{index % 2}",
            "shot_index": index // 4,
            "frame_index": index,
        }


def read_all(root, name, split) -> list[dict]:
    source = tfds_io.open_split(str(root), name, split)
    return [source[index] for index in range(len(source))]


def by_key(examples, index_field):
    return {(ex["source"], ex["shot_index"], ex[index_field]): ex for ex in examples}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    splits = {"train": make_clips(9), "test": make_clips(4, seed=1)}
    metadata = {"fps": 24, "settings": {"threshold": 0.01}}
    tfds_io.write_dataset(str(root), "clips", "clips", splits, FRAME_SHAPE, metadata=metadata)
    tfds_io.write_dataset(str(root), "frames", "frames", {"train": make_frames(10)}, FRAME_SHAPE)
    return root


def assert_same_examples(written, read, index_field, array_field):
    written, read = by_key(written, index_field), by_key(read, index_field)
    assert set(written) == set(read)
    for key, expected in written.items():
        got = read[key]
        assert set(got) == set(expected)
        np.testing.assert_array_equal(got[array_field], expected[array_field])
        assert got[array_field].dtype == np.uint8
        for field in expected:
            if field != array_field:
                assert got[field] == expected[field], field
                assert type(got[field]) is type(expected[field]), field


def test_clips_round_trip_is_exact(root):
    for split, seed, count in (("train", 0, 9), ("test", 1, 4)):
        read = read_all(root, "clips", split)
        assert len(read) == count
        assert_same_examples(list(make_clips(count, seed)), read, "clip_index", "frames")
    lengths = {ex["n_frames"] for ex in read_all(root, "clips", "train")}
    assert len(lengths) > 1  # variable-length clips really were stored


def test_frames_round_trip_is_exact(root):
    read = read_all(root, "frames", "train")
    assert_same_examples(list(make_frames(10)), read, "frame_index", "frame")


def test_metadata_splits_and_summary(root):
    assert tfds_io.read_metadata(str(root), "clips") == {"fps": 24, "settings": {"threshold": 0.01}}
    assert tfds_io.read_metadata(str(root), "frames") == {}
    assert tfds_io.split_names(str(root), "clips") == ["train", "test"]
    summary = tfds_io.dataset_summary(str(root), "clips")
    assert summary["kind"] == "clips" and tuple(summary["frame_shape"]) == FRAME_SHAPE
    expected = collections.Counter(ex["n_frames"] for ex in make_clips(9))
    assert summary["splits"]["train"]["n_frames_counts"] == {str(n): c for n, c in expected.items()}
    assert summary["splits"]["train"]["num_examples"] == 9
    assert tfds_io.dataset_exists(str(root), "clips")
    assert not tfds_io.dataset_exists(str(root), "nothing")
    assert tfds_io.dataset_path(str(root), "clips") == root / "clips"


def test_missing_dataset_or_split_says_how_to_build(root):
    with pytest.raises(UserError, match=r"nothing.*data_prep"):
        tfds_io.open_split(str(root), "nothing", "train")
    with pytest.raises(UserError, match=r"no split 'valid'.*data_prep"):
        tfds_io.open_split(str(root), "clips", "valid")


def write(root, name, splits, **kwargs):
    return tfds_io.write_dataset(str(root), name, "clips", splits, FRAME_SHAPE, **kwargs)


def test_failed_write_leaves_previous_version_and_no_debris(tmp_path):
    write(tmp_path, "ds", {"train": make_clips(5)}, metadata={"v": 1})
    with pytest.raises(RuntimeError, match="mid-way"):
        write(tmp_path, "ds", {"train": make_clips(8, seed=3, fail_at=4)}, metadata={"v": 2})
    assert tfds_io.read_metadata(str(tmp_path), "ds") == {"v": 1}
    read = read_all(tmp_path, "ds", "train")
    assert_same_examples(list(make_clips(5)), read, "clip_index", "frames")
    with pytest.raises(RuntimeError, match="mid-way"):
        write(tmp_path, "new", {"train": make_clips(8, fail_at=4)})
    assert not tfds_io.dataset_exists(str(tmp_path), "new")
    assert sorted(os.listdir(tmp_path)) == ["ds"]


def test_rewrite_replaces_complete_dataset(tmp_path):
    write(tmp_path, "ds", {"train": make_clips(5)}, metadata={"v": 1})
    write(tmp_path, "ds", {"valid": make_clips(3, seed=7)}, metadata={"v": 2})
    assert tfds_io.read_metadata(str(tmp_path), "ds") == {"v": 2}
    assert tfds_io.split_names(str(tmp_path), "ds") == ["valid"]
    read = read_all(tmp_path, "ds", "valid")
    assert_same_examples(list(make_clips(3, seed=7)), read, "clip_index", "frames")
    assert sorted(os.listdir(tmp_path)) == ["ds"]


def test_splits_larger_than_tfds_memory_buffer_are_ordered_in_memory(tmp_path, monkeypatch):
    """TFDS spills a split over its 1 GB buffer through TensorFlow (not installed); ours holds
    up to SHUFFLE_MEMORY_BYTES, and a larger split is one UserError, not a masked one."""
    from tensorflow_datasets.core import shuffle
    default = shuffle.MAX_MEM_BUFFER_SIZE
    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 100)  # as if the split were > 1 GB
    write(tmp_path, "ds", {"train": make_clips(9), "test": make_clips(4, seed=1)})
    assert_same_examples(list(make_clips(4, seed=1)), read_all(tmp_path, "ds", "test"),
                         "clip_index", "frames")
    monkeypatch.setattr(tfds_io, "SHUFFLE_MEMORY_BYTES", 100)
    with pytest.raises(UserError, match="more than 100 bytes.*tensorflow"):
        write(tmp_path, "big", {"train": make_clips(9), "test": make_clips(4, seed=1)})
    assert shuffle.MAX_MEM_BUFFER_SIZE == 100 and default > 100  # restored after the write
    assert sorted(os.listdir(tmp_path)) == ["ds"]


def bad_shape_clips():
    yield from make_clips(2)
    wrong = np.zeros((2, 4, 5, 3), np.uint8)
    yield {**next(make_clips(1)), "frames": wrong, "n_frames": 2, "shot_index": 99}


def duplicate_clips():
    yield from make_clips(2)
    yield from make_clips(1)


@pytest.mark.parametrize(
    "splits, match",
    [
        ({"train": bad_shape_clips()}, r"shape \(2, 4, 5, 3\).*\(4, 6, 3\)"),
        ({"train": duplicate_clips()}, "two examples have key"),
        ({"train": make_clips(2), "test": iter([])}, r"\['test'\] have no examples"),
        ({"train": (dict(ex, n_frames=9) for ex in make_clips(1))}, "n_frames=9"),
        ({"train": make_frames(2)}, "expected"),
    ],
)
def test_bad_examples_raise_user_error(tmp_path, splits, match):
    with pytest.raises(UserError, match=match):
        write(tmp_path, "bad", splits)
    assert os.listdir(tmp_path) == []


def test_bad_arguments_raise_user_error(tmp_path):
    (tmp_path / "precious").mkdir()
    with pytest.raises(UserError, match="not a dataset"):
        write(tmp_path, "precious", {"train": make_clips(1)})
    with pytest.raises(UserError, match="kind"):
        tfds_io.write_dataset(str(tmp_path), "x", "videos", {"train": make_clips(1)}, FRAME_SHAPE)
    with pytest.raises(UserError, match="plain folder name"):
        write(tmp_path, "a/b", {"train": make_clips(1)})
    with pytest.raises(UserError, match="JSON"):
        write(tmp_path, "x", {"train": make_clips(1)}, metadata={"a": {1, 2}})
    with pytest.raises(UserError, match="identifiers"):
        write(tmp_path, "x", {"train-a": make_clips(1)})
    assert sorted(os.listdir(tmp_path)) == ["precious"]
