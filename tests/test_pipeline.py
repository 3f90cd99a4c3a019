"""Grain pipelines: batch shapes, per-host sharding, crop/pad, global batches, checkpoint resume."""
import itertools
import json

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from ganime_jax.data import device_batches, pipeline, tfds_io
from ganime_jax.errors import UserError

FRAME_SHAPE = (4, 6, 3)
NUM_FRAMES = 24
CLIP_LENGTHS = [1, 2, 3, 4, 5, 6, 7, 8] * 3  # clip i has CLIP_LENGTHS[i] frames


def frame_examples():
    """Frame i has value i at pixel (0, 0, 0): its identity survives batching."""
    for index in range(NUM_FRAMES):
        frame = np.full(FRAME_SHAPE, 200, np.uint8)
        frame[0, 0, 0] = index
        yield {"frame": frame, "source": "ep", "shot_index": 0, "frame_index": index}


def clip_examples():
    """Pixel (0, 0, 0) of every frame is the clip id, pixel (0, 0, 1) is 1 + the frame's index."""
    for index, length in enumerate(CLIP_LENGTHS):
        clip = np.full((length, *FRAME_SHAPE), 100, np.uint8)
        clip[:, 0, 0, 0] = index
        clip[:, 0, 0, 1] = np.arange(1, length + 1)
        yield {"frames": clip, "n_frames": length, "source": "ep", "shot_index": index,
               "clip_index": 0}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    tfds_io.write_dataset(str(root), "frames", "frames", {"train": frame_examples()}, FRAME_SHAPE)
    tfds_io.write_dataset(str(root), "clips", "clips", {"train": clip_examples()}, FRAME_SHAPE)
    return str(root)


def options(**kwargs) -> pipeline.LoaderOptions:
    """One host's options (seed 0 unless given); `kwargs` set the other fields."""
    return pipeline.LoaderOptions(**{"seed": 0, "shard_index": 0, "shard_count": 1, **kwargs})


def clips(root, global_batch_size=4, max_frames=5, min_frames=3, random_crop=True, **kwargs):
    return pipeline.clips_loader(
        root, "clips", "train", global_batch_size=global_batch_size, max_frames=max_frames,
        min_frames=min_frames, random_crop=random_crop, options=options(**{"seed": 3, **kwargs})
    )


def frames(root, global_batch_size=8, **kwargs):
    return pipeline.frames_loader(root, "frames", "train", global_batch_size=global_batch_size,
                                  options=options(**{"seed": 1, **kwargs}))


def test_frames_batches_and_two_hosts_partition_the_split(root):
    seen = []
    for host in range(2):
        batches = list(frames(root, num_epochs=1, shard_index=host, shard_count=2))
        assert len(batches) == NUM_FRAMES // 8
        assert all(set(b) == {"frames"} and b["frames"].shape == (4, *FRAME_SHAPE) for b in batches)
        assert batches[0]["frames"].dtype == np.uint8
        seen.append([int(i) for b in batches for i in b["frames"][:, 0, 0, 0]])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(NUM_FRAMES))
    assert seen[0] != sorted(seen[0])  # shuffled


def test_two_hosts_read_the_rows_of_one_hosts_global_batches(root):
    """Same batches, same row order, same random crops, whatever the host count."""
    one = itertools.islice(clips(root, min_frames=1), 4)
    hosts = [itertools.islice(clips(root, min_frames=1, shard_index=h, shard_count=2), 4)
             for h in range(2)]
    for whole, *parts in zip(one, *hosts, strict=True):
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def test_a_two_host_data_position_resumes_on_one_host(root):
    states = []
    for host in range(2):
        iterator = iter(clips(root, min_frames=1, shard_index=host, shard_count=2))
        for _ in range(3):
            next(iterator)
        states.append(iterator.get_state().decode())
    resumed = iter(clips(root, min_frames=1))
    resumed.set_state(pipeline.data_state_for_this_process(states, 4).encode())
    reference = iter(clips(root, min_frames=1))
    for _ in range(3):
        next(reference)
    assert_batches_equal(next(resumed), next(reference))
    with_workers = [state.replace('"worker_count": 0', '"worker_count": 2') for state in states]
    with pytest.raises(UserError, match="resume it with 2 processes"):
        pipeline.data_state_for_this_process(with_workers, 4)


def test_frames_shuffle_is_seeded_and_infinite_by_default(root):
    def ids(seed, count=5):
        iterator = iter(frames(root, seed=seed))
        return [int(i) for _ in range(count) for i in next(iterator)["frames"][:, 0, 0, 0]]

    first = ids(1)
    assert len(first) == 40 > NUM_FRAMES  # ran past one epoch
    assert first == ids(1) and first != ids(2)


def test_clips_are_cropped_padded_and_short_ones_skipped(root):
    batches = list(clips(root, num_epochs=1, shuffle=False, global_batch_size=3))
    all_frames = np.concatenate([b["frames"] for b in batches])
    n_frames = np.concatenate([b["n_frames"] for b in batches])
    assert batches[0]["frames"].shape == (3, 5, *FRAME_SHAPE)
    assert batches[0]["n_frames"].dtype == np.int32
    ids = all_frames[:, 0, 0, 0, 0]
    eligible = [i for i, length in enumerate(CLIP_LENGTHS) if length >= 3]
    assert sorted(ids.tolist()) == eligible
    starts = set()
    for clip, n, clip_id in zip(all_frames, n_frames, ids):
        length = CLIP_LENGTHS[clip_id]
        assert n == min(length, 5)
        assert not clip[n:].any()  # zero padding
        offsets = clip[:n, 0, 0, 1].astype(int)
        np.testing.assert_array_equal(offsets, offsets[0] + np.arange(n))  # consecutive frames
        assert 1 <= offsets[0] and offsets[-1] <= length
        if length > 5:
            starts.add(int(offsets[0]))
    assert len(starts) > 1  # random windows, not always the first


def test_random_lengths_cut_windows_of_every_allowed_length(tmp_path):
    """Token clips of 20 frames (token value = 1 + frame index) cut to random windows of 3..8
    frames; without random lengths every window is the longest, 8."""
    def token_clips():
        for index in range(16):
            yield {"tokens": np.repeat(np.arange(1, 21, dtype=np.int16)[:, None], 2, axis=1),
                   "n_frames": 20, "source": "ep", "shot_index": index, "clip_index": 0}

    tfds_io.write_dataset(str(tmp_path), "toks", "tokens", {"train": token_clips()}, (2,),
                          dtype="int16")

    def batches(random_length: bool, seed: int = 3) -> list[dict]:
        loader = pipeline.tokens_loader(
            str(tmp_path), "toks", "train", global_batch_size=16, max_frames=8, min_frames=3,
            random_length=random_length, options=options(seed=seed))
        return list(itertools.islice(loader, 4))

    cut = batches(True)
    lengths = np.concatenate([b["n_frames"] for b in cut])
    assert set(lengths.tolist()) == set(range(3, 9))  # 64 draws of 6 lengths: all occur
    for batch in cut:
        for clip, n in zip(batch["tokens"], batch["n_frames"]):
            first = clip[0, 0]
            np.testing.assert_array_equal(clip[:n, 0], first + np.arange(n))  # consecutive
            assert not clip[n:].any() and first + n - 1 <= 20
    assert [b["n_frames"].tolist() for b in batches(True)] == [b["n_frames"].tolist() for b in cut]
    assert all((b["n_frames"] == 8).all() for b in batches(False))


def test_clips_without_random_crop_take_the_first_window(root):
    batch = next(iter(clips(root, random_crop=False, global_batch_size=8)))
    assert (batch["frames"][:, 0, 0, 0, 1] == 1).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(min_frames=9, max_frames=9), "no clip"),
        (dict(min_frames=6, max_frames=5), "min_frames"),
        (dict(global_batch_size=5, shard_count=2), "multiple of the 2 hosts"),
        (dict(shard_count=None), "both shard_index and shard_count"),
        (dict(seed=-1), "seed"),
        (dict(num_epochs=0), "num_epochs"),
    ],
)
def test_clips_loader_rejects_bad_settings(root, kwargs, match):
    with pytest.raises(UserError, match=match):
        clips(root, **kwargs)


def test_loader_rejects_wrong_dataset_kind(root):
    with pytest.raises(UserError, match="holds clips"):
        pipeline.frames_loader(root, "clips", "train", global_batch_size=2,
                               options=pipeline.LoaderOptions(seed=0))


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((8,), ("data",))


def test_to_global_batch_shards_batch_dim_over_data_axis(mesh):
    local = {
        "frames": np.arange(16 * 2 * 3).reshape(16, 2, 3).astype(np.uint8),
        "n_frames": np.arange(16, dtype=np.int32),
    }
    batch = device_batches.to_global_batch(local, mesh)
    for key, value in local.items():
        assert isinstance(batch[key], jax.Array) and batch[key].shape == value.shape
        assert batch[key].sharding.spec == PartitionSpec("data")
        assert {shard.data.shape[0] for shard in batch[key].addressable_shards} == {2}
        np.testing.assert_array_equal(np.asarray(batch[key]), value)
    two_axes = jax.make_mesh((4, 2), ("data", "fsdp"))
    replicated = device_batches.to_global_batch(local, two_axes)["frames"]
    assert {shard.data.shape for shard in replicated.addressable_shards} == {(4, 2, 3)}
    with pytest.raises(UserError, match="not divisible"):
        device_batches.to_global_batch({"x": np.zeros((12, 2))}, mesh)


def save_and_restore(iterator, fresh_iterator):
    """Moves `iterator`'s position into `fresh_iterator` as a training checkpoint carries it
    (`checkpointing.save`: the state as JSON text)."""
    saved = json.dumps({"iterators": [iterator.get_state().decode()]})
    fresh_iterator.set_state(json.loads(saved)["iterators"][0].encode())


def assert_batches_equal(a, b):
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))


@pytest.mark.parametrize("worker_count", [0, 2])
def test_checkpoint_resume_gives_the_uninterrupted_next_batch(root, worker_count):
    iterator = iter(clips(root, worker_count=worker_count))
    for _ in range(5):  # past one epoch of the 18 eligible clips
        next(iterator)
    fresh = iter(clips(root, worker_count=worker_count))
    save_and_restore(iterator, fresh)
    for _ in range(2):
        assert_batches_equal(next(fresh), next(iterator))


def test_prefetcher_checkpoint_ignores_batches_prefetched_ahead(root, mesh):
    uninterrupted = iter(clips(root, global_batch_size=8))
    loader = iter(clips(root, global_batch_size=8))
    with device_batches.prefetch_to_mesh(loader, mesh, size=3) as prefetcher:
        for _ in range(2):
            batch = next(prefetcher)
            assert_batches_equal(batch, next(uninterrupted))
            assert batch["frames"].sharding.spec == PartitionSpec("data")
        with device_batches.prefetch_to_mesh(iter(clips(root, global_batch_size=8)), mesh) as fresh:
            save_and_restore(prefetcher, fresh)
            for _ in range(2):
                assert_batches_equal(next(fresh), next(uninterrupted))


def test_prefetcher_ends_with_its_iterator_and_forwards_errors(mesh):
    with device_batches.prefetch_to_mesh(iter([{"x": np.zeros((8, 1))}] * 2), mesh) as prefetcher:
        assert len(list(prefetcher)) == 2

    def failing():
        yield {"x": np.zeros((8, 1))}
        raise ValueError("reader broke")

    with device_batches.prefetch_to_mesh(failing(), mesh) as prefetcher:
        next(prefetcher)
        with pytest.raises(ValueError, match="reader broke"):
            next(prefetcher)


def test_prefetcher_with_state_pairs_each_batch_with_its_resume_state(root, mesh):
    loader = iter(clips(root, global_batch_size=8))
    with pipeline.prefetch_to_mesh(loader, mesh, with_state=True) as prefetcher:
        _, state = next(prefetcher)
        expected, _ = next(prefetcher)
    resumed = iter(clips(root, global_batch_size=8))
    resumed.set_state(state)
    assert_batches_equal(next(resumed), expected)


def test_loader_options_from_config_take_the_data_section_and_overrides():
    data = ml_collections.ConfigDict(
        dict(worker_count=2, worker_buffer_size=3, read_threads=0, read_buffer=7, prefetch=2)
    )
    options = pipeline.LoaderOptions.from_config(data, 5, shuffle=False, num_epochs=1)
    assert options == pipeline.LoaderOptions(
        seed=5, shuffle=False, num_epochs=1, worker_count=2, worker_buffer_size=3,
        read_threads=0, read_buffer=7
    )
