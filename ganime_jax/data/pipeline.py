"""Grain input pipelines over our TFDS datasets: per-host shards, seeded, checkpointable.

Each JAX process (host) reads only its rows of every global batch and yields local batches of
`global_batch_size // shard_count` examples; `to_global_batch` and `prefetch_to_mesh`
(from `device_batches`, re-exported here) assemble them into global arrays over the mesh. The
global batches are the same whatever the process count (rows in the same order, each with the
same crop), so a run on several hosts trains on exactly what one host would have (as long as
no clip is skipped for being short: skipping happens per host).
The `grain.python.DataLoader` iterators have `get_state()/set_state()`; training checkpoints
keep that state as JSON text (`ganime_jax.checkpointing`), one per process.

Clips shorter than `min_frames` are SKIPPED (filtered out), not rejected; a split with no clip
long enough is a UserError. With a finite `num_epochs` on several hosts, skipping can leave
hosts with different batch counts, so prefer infinite epochs (the default) for training.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import grain.python as grain
import jax
import ml_collections
import numpy as np
from absl import flags, logging

from ganime_jax.data import tfds_io
from ganime_jax.data.device_batches import MeshPrefetcher, prefetch_to_mesh, to_global_batch
from ganime_jax.errors import UserError

__all__ = [
    "LoaderOptions",
    "MeshPrefetcher",
    "clips_loader",
    "data_state_for_this_process",
    "frames_loader",
    "prefetch_to_mesh",
    "to_global_batch",
    "tokens_loader",
]

# Reader threads per process and records buffered ahead of the transforms (grain's defaults,
# 16 threads and 500 records, are tuned for remote disks and small records; clips are ~0.6 MB).
DEFAULT_READ_THREADS = 4
DEFAULT_READ_BUFFER = 64


class _FrameOnly(grain.MapTransform):
    """Keeps only the frame of a frames-dataset record (strings cannot be batched to devices)."""

    def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
        return {"frames": element["frame"]}


class _LongEnough(grain.FilterTransform):
    """Skips clips with fewer than `min_frames` frames."""

    def __init__(self, min_frames: int):
        self.min_frames = min_frames

    def filter(self, element: dict[str, Any]) -> bool:
        return int(element["n_frames"]) >= self.min_frames


class _CropOrPad(grain.RandomMapTransform):
    """Fits a clip (the array in `field`) to exactly `max_frames` frames.

    Longer clips are cropped to a window of `max_frames` consecutive frames (at a random start
    drawn from grain's per-record rng, so a resumed pipeline draws the same window; at the start
    when `random_crop` is False); shorter clips are zero-padded at the end. Given `min_length`
    (and a random crop), the window's length is drawn too, uniformly from `min_length` to the
    most the clip and `max_frames` allow. `n_frames` is the number of real frames kept. The
    array is cast to `dtype` when given.
    """

    def __init__(self, max_frames: int, random_crop: bool, field: str = "frames",
                 dtype: Any = None, min_length: int | None = None):
        self.max_frames = max_frames
        self.random_crop = random_crop
        self.field = field
        self.dtype = dtype
        self.min_length = min_length

    def random_map(
        self, element: dict[str, Any], rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        frames = element[self.field]
        length = frames.shape[0]
        window = min(length, self.max_frames)
        if self.random_crop and self.min_length is not None and self.min_length < window:
            window = int(rng.integers(self.min_length, window + 1))
        if length > window:
            start = int(rng.integers(0, length - window + 1)) if self.random_crop else 0
            frames = frames[start : start + window]
            length = window
        padded = np.zeros((self.max_frames, *frames.shape[1:]), dtype=self.dtype or frames.dtype)
        padded[:length] = frames
        return {self.field: padded, "n_frames": np.int32(length)}


def _shard_options(
    global_batch_size: int, shard_index: int | None, shard_count: int | None
) -> grain.ShardOptions:
    if (shard_index is None) != (shard_count is None):
        raise UserError(
            "give both shard_index and shard_count, or neither (then the JAX process index/count)"
        )
    if shard_index is None:
        shard_index, shard_count = jax.process_index(), jax.process_count()
    if not 0 <= shard_index < shard_count:
        raise UserError(f"shard_index {shard_index} must be in [0, shard_count={shard_count})")
    if global_batch_size <= 0 or global_batch_size % shard_count:
        raise UserError(
            f"global_batch_size {global_batch_size} must be a positive multiple of the "
            f"{shard_count} hosts"
        )
    return grain.ShardOptions(shard_index=shard_index, shard_count=shard_count, drop_remainder=True)


class _GlobalBatchRows:
    """This process's rows of each global batch, from one order of the whole split.

    A `grain.DataLoader` with shard options (p, n) asks its sampler for indices p, p + n,
    p + 2n, ...; the k-th of them is row `p * local_batch + k % local_batch` of global batch
    `k // local_batch`. A record keeps the rng of its position in the global order, so its
    random crop does not depend on the process count. A global batch that the split cannot
    fill is dropped on every process alike (`total`: positions in the order, None = endless).

    Its repr, which grain checks when a saved position is restored, is the global order's: the
    same on every process and for any process count (and the sampler that 1-process runs used
    before, so their checkpoints still resume).
    """

    def __init__(self, order: grain.IndexSampler, shard: grain.ShardOptions, local_batch: int,
                 total: int | None):
        self.order = order
        self.shard = shard
        self.local_batch = local_batch
        self.total = total

    def __repr__(self) -> str:
        return repr(self.order)

    def __getitem__(self, index: int) -> grain.RecordMetadata:
        batch, row = divmod((index - self.shard.shard_index) // self.shard.shard_count,
                            self.local_batch)
        global_batch = self.local_batch * self.shard.shard_count
        if self.total is not None and (batch + 1) * global_batch > self.total:
            raise IndexError(f"global batch {batch} runs past the {self.total} records")
        record = self.order[batch * global_batch + self.shard.shard_index * self.local_batch
                            + row]
        return grain.RecordMetadata(index=index, record_key=record.record_key, rng=record.rng)


def _require_kind(data_root: str, name: str, kind: str) -> dict[str, Any]:
    summary = tfds_io.dataset_summary(data_root, name)
    if summary["kind"] != kind:
        path = tfds_io.dataset_path(data_root, name)
        raise UserError(f"dataset {path} holds {summary['kind']}, but this loader needs {kind}")
    return summary


@dataclasses.dataclass(frozen=True)
class LoaderOptions:
    """How a loader reads and orders a split, whatever the dataset kind.

    `shard_index`/`shard_count` default to the JAX process index/count (give both or neither);
    `num_epochs=None` repeats forever. `worker_count` grain worker processes (0: read in this
    process) each keep `worker_buffer_size` batches ready; `read_threads` threads per process
    read `read_buffer` records ahead.
    """

    seed: int
    shuffle: bool = True
    num_epochs: int | None = None
    worker_count: int = 0
    worker_buffer_size: int = 2
    shard_index: int | None = None
    shard_count: int | None = None
    read_threads: int = DEFAULT_READ_THREADS
    read_buffer: int = DEFAULT_READ_BUFFER

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**32:
            raise UserError(f"data seed {self.seed} must be in [0, 2**32) (grain's limit)")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise UserError(
                f"num_epochs must be None (repeat forever) or >= 1, got {self.num_epochs}"
            )

    @classmethod
    def from_config(
        cls, data: ml_collections.ConfigDict, seed: int, **overrides: Any
    ) -> LoaderOptions:
        """The reading knobs of a config's `data` section, with `overrides` on top."""
        fields = ("worker_count", "worker_buffer_size", "read_threads", "read_buffer")
        return cls(seed=seed, **{**{name: data[name] for name in fields}, **overrides})


def _loader(
    source: tfds_io.SplitSource, operations: list, global_batch_size: int, options: LoaderOptions
) -> grain.DataLoader:
    shard_options = _shard_options(global_batch_size, options.shard_index, options.shard_count)
    if options.worker_count > 0 and not flags.FLAGS.is_parsed():
        # Grain's worker processes read absl flags; outside an absl app nobody parsed them.
        flags.FLAGS.mark_as_parsed()
    local_batch = global_batch_size // shard_options.shard_count
    order = grain.IndexSampler(
        num_records=len(source),
        shard_options=grain.ShardOptions(shard_index=0, shard_count=1, drop_remainder=True),
        shuffle=options.shuffle,
        num_epochs=options.num_epochs,
        seed=options.seed,
    )
    total = None if options.num_epochs is None else len(source) * options.num_epochs
    sampler = _GlobalBatchRows(order, shard_options, local_batch, total)
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=[*operations, grain.Batch(batch_size=local_batch, drop_remainder=True)],
        worker_count=options.worker_count,
        worker_buffer_size=options.worker_buffer_size,
        shard_options=shard_options,
        read_options=grain.ReadOptions(
            num_threads=options.read_threads, prefetch_buffer_size=options.read_buffer
        ),
    )


def frames_loader(
    data_root: str, name: str, split: str, *, global_batch_size: int, options: LoaderOptions
) -> grain.DataLoader:
    """Batches {"frames": (local_batch, H, W, 3) uint8} from a "frames" dataset.

    Infinite when `options.num_epochs` is None; the last partial batch is dropped otherwise.
    """
    _require_kind(data_root, name, "frames")
    source = tfds_io.open_split(data_root, name, split)
    return _loader(source, [_FrameOnly()], global_batch_size, options)


def _check_clip_lengths(
    path: Any, split: str, summary: dict[str, Any], min_frames: int, max_frames: int
) -> None:
    if not 1 <= min_frames <= max_frames:
        raise UserError(f"need 1 <= min_frames ({min_frames}) <= max_frames ({max_frames})")
    counts = {int(n): count for n, count in summary["splits"][split]["n_frames_counts"].items()}
    skipped = sum(count for n, count in counts.items() if n < min_frames)
    if skipped == sum(counts.values()):
        raise UserError(
            f"no clip of {path} split {split!r} has min_frames={min_frames} frames "
            f"(the longest has {max(counts)}); lower min_frames or rebuild with longer clips"
        )
    if skipped:
        total = sum(counts.values())
        logging.info(
            "%s/%s: skipping %d of %d clips shorter than %d frames",
            path, split, skipped, total, min_frames,
        )


def _clip_loader(
    data_root: str,
    name: str,
    split: str,
    kind: str,
    crop: _CropOrPad,
    min_frames: int,
    global_batch_size: int,
    options: LoaderOptions,
) -> grain.DataLoader:
    """Skips clips shorter than `min_frames`, then crops/pads the rest with `crop`."""
    summary = _require_kind(data_root, name, kind)
    source = tfds_io.open_split(data_root, name, split)
    path = tfds_io.dataset_path(data_root, name)
    _check_clip_lengths(path, split, summary, min_frames, crop.max_frames)
    return _loader(source, [_LongEnough(min_frames), crop], global_batch_size, options)


def clips_loader(
    data_root: str,
    name: str,
    split: str,
    *,
    global_batch_size: int,
    max_frames: int,
    min_frames: int,
    options: LoaderOptions,
    random_crop: bool = True,
    kind: str = "clips",
) -> grain.DataLoader:
    """Batches {"frames": (B, max_frames, H, W, 3) uint8, "n_frames": (B,) int32} of clips.

    Clips are cropped/padded to `max_frames` (see `_CropOrPad`); clips shorter than
    `min_frames` are skipped. `kind="candidates"` reads a "candidates" dataset the same way
    (its frames have 15 channels, `tfds_io.CANDIDATE_IMAGES`).
    """
    if kind not in ("clips", "candidates"):
        raise ValueError(f"clips_loader reads clips or candidates, not {kind!r}")
    crop = _CropOrPad(max_frames, random_crop)
    return _clip_loader(
        data_root, name, split, kind, crop, min_frames, global_batch_size, options
    )


def tokens_loader(
    data_root: str,
    name: str,
    split: str,
    *,
    global_batch_size: int,
    max_frames: int,
    min_frames: int,
    options: LoaderOptions,
    random_crop: bool = True,
    random_length: bool = False,
) -> grain.DataLoader:
    """Batches {"tokens": (B, max_frames, h*w) int32, "n_frames": (B,) int32} of token clips.

    Cropped/padded and filtered like `clips_loader`, from a "tokens" dataset; with
    `random_length` each clip is cut to a window of a random length from `min_frames` to
    `max_frames` (`_CropOrPad`), so that the countdown varies apart from a frame's position.
    """
    crop = _CropOrPad(max_frames, random_crop, "tokens", np.int32,
                      min_length=min_frames if random_length else None)
    return _clip_loader(
        data_root, name, split, "tokens", crop, min_frames, global_batch_size, options
    )


def data_state_for_this_process(states: list[str], global_batch_size: int) -> str:
    """This process's loader state, from the states all processes of a run saved (in order).

    With the process count they were saved by, each process takes its own. With another count
    (a run resumed on more or fewer hosts; loaders without worker processes only), every
    process starts at the first global batch that none of the saving processes had begun:
    where no clip was skipped for being short that is exactly where the run stopped, since a
    global batch is the same whatever the process count (`_GlobalBatchRows`).
    """
    index, count = jax.process_index(), jax.process_count()
    if len(states) == count:
        return states[index]
    saved = [json.loads(state) for state in states]
    if any(state["worker_count"] for state in saved):
        raise UserError(
            f"this checkpoint's data position was saved by {len(states)} processes with grain "
            f"worker processes; resume it with {len(states)} processes, or set "
            "config.data.worker_count=0 for the run that saves it.")
    saved_local = global_batch_size // len(states)
    taken = [(state["last_seen_indices"]["0"] + len(states) - q) // len(states)
             for q, state in enumerate(saved)]  # records each saving process had read
    batches = max(-(-records // saved_local) for records in taken)
    local = global_batch_size // count
    resumed = {**saved[0], "last_seen_indices": {"0": index + count * (batches * local - 1)},
               "last_worker_index": -1}
    return json.dumps(resumed, indent=4)
