"""Write and read our TFDS datasets (ArrayRecord files, no TensorFlow needed).

A dataset `name` lives in `<data_root>/<name>/`: the files of one TFDS version directory
(`dataset_info.json`, `features.json`, `*.array_record-*`) plus `ganime_metadata.json`
(the kind, frame shape, per-split statistics and the caller's metadata).

Three kinds of examples:
- "clips":  {"frames": (T, H, W, 3) uint8 (T varies), "n_frames": int, "source": str,
             "shot_index": int, "clip_index": int}
- "frames": {"frame": (H, W, 3) uint8, "source": str, "shot_index": int, "frame_index": int}
- "tokens": {"tokens": (T, h*w) int16 or int32 (a clip's VQ-GAN token grids, flattened row-major),
             "n_frames": int, "source": str, "shot_index": int, "clip_index": int}
- "candidates": a clip as "clips" has it, with what generation made of it beside each frame:
             "frames" (T, H, W, 15) uint8, per frame the true RGB, then the decode of the kept
             candidate's tokens (of the given tokens at frames 0 and T-1), then the K
             candidates' per-pixel median, mean and spread (zero at frames 0 and T-1); the
             training data of a stage-3 refiner that reads candidate statistics.
For "tokens", `frame_shape` is (h*w,) and `dtype` names the integer type.

Writing is atomic: TFDS prepares into a staging folder beside the final one, which is swapped
in only once every split is complete. A failed write leaves any previous version untouched.
"""
from __future__ import annotations

import collections
import contextlib
import json
import pathlib
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import shuffle as tfds_shuffle

from ganime_jax.errors import UserError

KINDS = ("clips", "frames", "tokens", "candidates")
SEQUENCE_KINDS = ("clips", "tokens", "candidates")  # one example per clip, with n_frames
# The RGB images a "candidates" frame stacks on its channel axis, in order.
CANDIDATE_IMAGES = ("true", "decoded", "median", "mean", "spread")
TOKEN_DTYPES = ("int16", "int32")
METADATA_FILE = "ganime_metadata.json"
TFDS_INFO_FILE = "dataset_info.json"
TFDS_VERSION = "1.0.0"
BUILD_HINT = (
    "run `python -m data_prep.embedded ...` or `python -m data_prep.episodes ...` to build it"
)
# TFDS orders a split's examples in memory up to 1 GB and spills larger splits to temporary
# files through TensorFlow, which is not installed: a split is ordered in memory up to this
# many bytes instead (Moving MNIST's 200,000 training frames are 2.4 GB).
SHUFFLE_MEMORY_BYTES = 8 << 30

# Per kind: the integer fields beside "source", and the index fields that make the example key.
_INT_FIELDS = {
    "clips": ("n_frames", "shot_index", "clip_index"),
    "frames": ("shot_index", "frame_index"),
    "tokens": ("n_frames", "shot_index", "clip_index"),
    "candidates": ("n_frames", "shot_index", "clip_index"),
}
_KEY_FIELDS = {
    "clips": ("shot_index", "clip_index"),
    "frames": ("shot_index", "frame_index"),
    "tokens": ("shot_index", "clip_index"),
    "candidates": ("shot_index", "clip_index"),
}
_ARRAY_FIELD = {"clips": "frames", "frames": "frame", "tokens": "tokens", "candidates": "frames"}


def variant_name(dataset: str, kind: str) -> str:
    """The name of dataset `dataset`'s variant of `kind` (e.g. `kny_clips`): one per kind."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return f"{dataset}_{kind}"


def dataset_path(data_root: str, name: str) -> pathlib.Path:
    """The folder of dataset `name` under `data_root`."""
    if not name or name != pathlib.Path(name).name or name.startswith("."):
        raise UserError(
            f"dataset name {name!r} must be a plain folder name (no '/', not starting with '.')"
        )
    return pathlib.Path(data_root) / name


def dataset_exists(data_root: str, name: str) -> bool:
    """Whether a complete dataset `name` is readable under `data_root`."""
    path = dataset_path(data_root, name)
    return (path / TFDS_INFO_FILE).is_file() and (path / METADATA_FILE).is_file()


def _require_dataset(data_root: str, name: str) -> pathlib.Path:
    path = dataset_path(data_root, name)
    if not dataset_exists(data_root, name):
        raise UserError(f"no dataset at {path}: {BUILD_HINT}")
    return path


def _read_summary(data_root: str, name: str) -> dict[str, Any]:
    path = _require_dataset(data_root, name)
    return json.loads((path / METADATA_FILE).read_text())


def read_metadata(data_root: str, name: str) -> dict:
    """The `metadata` dict given to `write_dataset` (e.g. the data_prep settings and summary)."""
    return _read_summary(data_root, name)["metadata"]


def dataset_summary(data_root: str, name: str) -> dict[str, Any]:
    """{"kind", "frame_shape", "dtype", "splits": {split: {"num_examples", ["n_frames_counts"]}}}.

    For clips and tokens, `n_frames_counts` maps each clip length (as a string, JSON keys) to
    its count.
    """
    summary = _read_summary(data_root, name)
    return {key: value for key, value in summary.items() if key != "metadata"}


def split_names(data_root: str, name: str) -> list[str]:
    """The splits of dataset `name`, in the order they were written."""
    return list(_read_summary(data_root, name)["splits"])


class SplitSource:
    """Random access to one split: `len(source)`, `source[i]` -> dict of numpy arrays/str/int.

    Grain validates checkpoints against `repr(data_source)`, so the repr names the dataset,
    split and size (a rebuilt dataset of another size refuses an old iterator state).
    """

    def __init__(self, tfds_source: Any, name: str, split: str):
        self._source = tfds_source
        self._name = name
        self._split = split

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self._source[index]
        return {
            key: value.decode() if isinstance(value, bytes) else value
            for key, value in record.items()
        }

    def __repr__(self) -> str:
        return f"SplitSource(name={self._name!r}, split={self._split!r}, num_records={len(self)})"


def open_split(data_root: str, name: str, split: str) -> SplitSource:
    """A random-access source over one split, usable as a grain data source."""
    path = _require_dataset(data_root, name)
    splits = split_names(data_root, name)
    if split not in splits:
        raise UserError(f"dataset {path} has no split {split!r} (it has {splits}): {BUILD_HINT}")
    builder = tfds.builder_from_directory(str(path))
    return SplitSource(builder.as_data_source(split=split), name, split)


def first_records(data_root: str, name: str, split: str, *, min_frames: int,
                  count: int) -> list[dict[str, Any]]:
    """The first `count` records of a split with at least `min_frames` frames, in split order:
    the fixed held-out clips that eval, sampling and training summaries all show."""
    source = open_split(data_root, name, split)
    records = []
    for index in range(len(source)):
        if len(records) == count:
            break
        record = source[index]
        if int(record["n_frames"]) >= min_frames:
            records.append(record)
    return records


def first_clip_batches(data_root: str, name: str, split: str, field: str, *, min_frames: int,
                       max_frames: int, batch_size: int, num_batches: int,
                       dtype: Any) -> list[dict[str, np.ndarray]]:
    """The `first_records` of a split (`num_batches * batch_size` of them) as whole batches
    {field: (batch_size, max_frames, ...) `dtype`, "n_frames": (batch_size,) int32}: each clip's
    first `max_frames` frames, zero-padded, and the last batch filled with empty clips
    (n_frames 0) that a training stage's held-out sums skip. A one-line UserError when no clip
    of the split has `min_frames` frames."""
    records = first_records(data_root, name, split, min_frames=min_frames,
                            count=num_batches * batch_size)
    clips = [np.asarray(r[field])[:max_frames] for r in records]
    if not clips:
        raise UserError(f"no clip of {name} split {split!r} has min_frames={min_frames} frames "
                        "to evaluate on.")
    size = -(-len(clips) // batch_size) * batch_size
    values = np.zeros((size, max_frames, *clips[0].shape[1:]), dtype)
    n_frames = np.zeros((size,), np.int32)
    for i, clip in enumerate(clips):
        values[i, :len(clip)], n_frames[i] = clip, len(clip)
    return [{field: values[i:i + batch_size], "n_frames": n_frames[i:i + batch_size]}
            for i in range(0, size, batch_size)]


def _features(
    kind: str, frame_shape: tuple[int, ...], dtype: np.dtype
) -> tfds.features.FeaturesDict:
    # BYTES stores the raw array buffer; TFDS's default would store every pixel as an int64 varint
    # (about 10x slower to write and read). ArrayRecord compresses the records.
    shape = (None, *frame_shape) if kind in SEQUENCE_KINDS else tuple(frame_shape)
    array = tfds.features.Tensor(shape=shape, dtype=dtype, encoding=tfds.features.Encoding.BYTES)
    spec = {_ARRAY_FIELD[kind]: array, "source": tfds.features.Text()}
    spec.update({field: tfds.features.Scalar(dtype=np.int64) for field in _INT_FIELDS[kind]})
    return tfds.features.FeaturesDict(spec)


class _SplitFailed(Exception):
    """Raised into TFDS when a split's examples fail; the original error is re-raised later."""


class _SplitExamples:
    """Validates one split's examples, keys them, counts them, and remembers the first error.

    TFDS rewrites the messages of exceptions raised inside generators; keeping the original
    in `error` lets `write_dataset` re-raise it untouched (a UserError stays one line).
    """

    def __init__(
        self,
        split: str,
        examples: Iterable[dict],
        kind: str,
        frame_shape: tuple[int, ...],
        dtype: np.dtype,
    ):
        self.split = split
        self.examples = examples
        self.kind = kind
        self.frame_shape = tuple(frame_shape)
        self.dtype = np.dtype(dtype)
        self.num_examples = 0
        self.n_frames_counts: collections.Counter[int] = collections.Counter()
        self.error: Exception | None = None
        self.finished = False  # every example was read
        # TFDS finds duplicate keys too, but its error message needs TensorFlow to print.
        self._seen_keys: set[str] = set()

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        try:
            for example in self.examples:
                example = self._check(example)
                key = self._key(example)
                if key in self._seen_keys:
                    raise UserError(
                        f"split {self.split!r}: two examples have key {key!r}; "
                        "make the indices unique"
                    )
                self._seen_keys.add(key)
                yield key, example
            self.finished = True
        except Exception as error:
            self.error = error
            raise _SplitFailed(self.split) from error

    def _key(self, example: dict) -> str:
        indices = "/".join(f"{int(example[field]):08d}" for field in _KEY_FIELDS[self.kind])
        return f"{example['source']}/{indices}"

    def _check(self, example: dict) -> dict:
        array_field = _ARRAY_FIELD[self.kind]
        expected = {array_field, "source", *_INT_FIELDS[self.kind]}
        if set(example) != expected:
            raise UserError(
                f"split {self.split!r}: a {self.kind} example has keys {sorted(example)}, "
                f"expected {sorted(expected)}"
            )
        array = np.asarray(example[array_field])
        sequence = self.kind in SEQUENCE_KINDS
        ndim = len(self.frame_shape) + int(sequence)
        frame_dims = array.shape[ndim - len(self.frame_shape) :]
        shape_ok = array.ndim == ndim and frame_dims == self.frame_shape
        if not shape_ok or array.dtype != self.dtype:
            raise UserError(
                f"split {self.split!r}, {example['source']!r}: {array_field} has shape "
                f"{array.shape} dtype {array.dtype}, expected {self.dtype} frames of shape "
                f"{self.frame_shape}; resize the frames or pass the matching frame_shape"
            )
        if sequence:
            if array.shape[0] == 0 or int(example["n_frames"]) != array.shape[0]:
                raise UserError(
                    f"split {self.split!r}, {example['source']!r}: n_frames={example['n_frames']} "
                    f"but the clip has {array.shape[0]} frames (must be equal and > 0)"
                )
            self.n_frames_counts[array.shape[0]] += 1
        self.num_examples += 1
        return {**example, array_field: array, "source": str(example["source"])}

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {"num_examples": self.num_examples}
        if self.kind in SEQUENCE_KINDS:
            counts = sorted(self.n_frames_counts.items())
            stats["n_frames_counts"] = {str(n): count for n, count in counts}
        return stats


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """TFDS builder over in-memory iterables; subclasses only fix the TFDS dataset name."""

    VERSION = tfds.core.Version(TFDS_VERSION)
    # No checksums/code files: TFDS would otherwise look them up beside this package, through
    # the `importlib_resources` backport, which is not installed.
    code_path = None

    def __init__(
        self,
        *,
        kind: str,
        frame_shape: tuple[int, ...],
        dtype: np.dtype,
        splits: dict[str, _SplitExamples],
        description: str,
        **kwargs,
    ):
        self._kind = kind
        self._frame_shape = tuple(frame_shape)
        self._dtype = np.dtype(dtype)
        self._splits = splits
        self._description = description
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        features = _features(self._kind, self._frame_shape, self._dtype)
        return tfds.core.DatasetInfo(
            builder=self, description=self._description, features=features
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: iter(examples) for split, examples in self._splits.items()}

    def _generate_examples(self):
        raise NotImplementedError("examples come from _split_generators")

    # TFDS prints "Downloading and preparing ..." banners to stdout (naming the staging folder);
    # our CLIs keep stdout for their own results, and TFDS's progress bars already show progress.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass


class _ClipsBuilder(_Builder, skip_registration=True):
    name = "ganime_clips"


class _FramesBuilder(_Builder, skip_registration=True):
    name = "ganime_frames"


class _TokensBuilder(_Builder, skip_registration=True):
    name = "ganime_tokens"


class _CandidatesBuilder(_Builder, skip_registration=True):
    name = "ganime_candidates"


_BUILDERS = {"clips": _ClipsBuilder, "frames": _FramesBuilder, "tokens": _TokensBuilder,
             "candidates": _CandidatesBuilder}


def _array_dtype(kind: str, dtype: str | None) -> np.dtype:
    """uint8 for pixels; for tokens the given integer type (int32 when None)."""
    if kind != "tokens":
        if dtype not in (None, "uint8"):
            raise UserError(f"{kind} datasets hold uint8 pixels; got dtype {dtype!r}")
        return np.dtype(np.uint8)
    if dtype is None:
        return np.dtype(np.int32)
    if np.dtype(dtype).name not in TOKEN_DTYPES:
        raise UserError(f"token dtype {dtype!r} is not one of {TOKEN_DTYPES}")
    return np.dtype(dtype)


def _validate_write_args(path: pathlib.Path, kind: str, splits: Mapping, frame_shape) -> None:
    if kind not in KINDS:
        raise UserError(f"dataset kind {kind!r} is not one of {KINDS}")
    if kind == "tokens":
        if len(tuple(frame_shape)) != 1 or int(tuple(frame_shape)[0]) < 1:
            raise UserError(f"frame_shape {tuple(frame_shape)} of tokens must be (h*w,)")
    elif kind == "candidates":
        channels = 3 * len(CANDIDATE_IMAGES)
        if len(tuple(frame_shape)) != 3 or tuple(frame_shape)[-1] != channels:
            raise UserError(f"frame_shape {tuple(frame_shape)} of candidates must be "
                            f"(height, width, {channels})")
    elif len(tuple(frame_shape)) != 3 or tuple(frame_shape)[-1] != 3:
        raise UserError(f"frame_shape {tuple(frame_shape)} must be (height, width, 3)")
    if not splits:
        raise UserError(f"no splits given for dataset {path}")
    bad = [split for split in splits if not str(split).isidentifier()]
    if bad:
        raise UserError(f"split names {bad} must be identifiers (letters, digits, '_')")
    if path.exists() and not (path / TFDS_INFO_FILE).is_file():
        raise UserError(f"{path} exists and is not a dataset; choose another name or remove it")


@contextlib.contextmanager
def _in_memory_shuffle(limit_bytes: int) -> Iterator[None]:
    """Lets TFDS order splits of up to `limit_bytes` in memory (see SHUFFLE_MEMORY_BYTES)."""
    previous = tfds_shuffle.MAX_MEM_BUFFER_SIZE
    tfds_shuffle.MAX_MEM_BUFFER_SIZE = limit_bytes
    try:
        yield
    finally:
        tfds_shuffle.MAX_MEM_BUFFER_SIZE = previous


def _raise_write_error(
    error: Exception, splits: dict[str, _SplitExamples], path: pathlib.Path
) -> None:
    for examples in splits.values():
        if examples.error is not None:
            raise examples.error from None
    empty = [split for split, examples in splits.items()
             if examples.finished and examples.num_examples == 0]
    if empty:
        raise UserError(
            f"{path}: split(s) {empty} have no examples; give more input or drop the split"
        ) from None
    raise error


def write_dataset(
    data_root: str,
    name: str,
    kind: str,
    splits: Mapping[str, Iterable[dict]],
    frame_shape: tuple[int, ...],
    description: str = "",
    metadata: dict | None = None,
    dtype: str | None = None,
) -> pathlib.Path:
    """Writes (or atomically replaces) dataset `name` and returns its folder.

    `splits` maps split names to iterables of examples (see the module docstring); they are
    streamed, never held in memory whole. Example keys are "<source>/<shot>/<clip or frame>",
    which must be unique within a split. `dtype` is for "tokens" ("int16" or "int32").
    """
    path = dataset_path(data_root, name)
    _validate_write_args(path, kind, splits, frame_shape)
    array_dtype = _array_dtype(kind, dtype)
    try:
        json.dumps(metadata or {})
    except TypeError as error:
        raise UserError(f"metadata for {path} must be JSON-serialisable: {error}") from None
    frame_shape = tuple(int(size) for size in frame_shape)
    split_examples = {
        split: _SplitExamples(split, examples, kind, frame_shape, array_dtype)
        for split, examples in splits.items()
    }
    staging = path.parent / f".{name}.incomplete-{uuid.uuid4().hex}"
    try:
        builder = _BUILDERS[kind](
            kind=kind,
            frame_shape=frame_shape,
            dtype=array_dtype,
            splits=split_examples,
            description=description,
            data_dir=str(staging),
            file_format="array_record",
        )
        try:
            with _in_memory_shuffle(SHUFFLE_MEMORY_BYTES):
                builder.download_and_prepare()
        except ModuleNotFoundError as error:
            if error.name != "tensorflow":
                raise
            raise UserError(
                f"{path}: a split holds more than {SHUFFLE_MEMORY_BYTES:,} bytes of examples, "
                "which TFDS orders through TensorFlow; build it as several smaller datasets "
                "or pip install tensorflow-cpu") from None
        except Exception as error:  # noqa: BLE001 - re-raised as the most useful error
            _raise_write_error(error, split_examples, path)
        built = pathlib.Path(builder.data_dir)
        summary = {
            "kind": kind,
            "frame_shape": list(frame_shape),
            "dtype": array_dtype.name,
            "splits": {split: examples.stats() for split, examples in split_examples.items()},
            "metadata": metadata or {},
        }
        (built / METADATA_FILE).write_text(json.dumps(summary, indent=2))
        _swap_in(built, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _swap_in(built: pathlib.Path, path: pathlib.Path) -> None:
    """Moves the complete dataset `built` to `path`, replacing an existing dataset there.

    The old version is renamed aside first and deleted only after the new one is in place.
    Between the two renames the name is briefly absent (never half-written); a crash exactly
    there leaves the old version in `.<name>.replaced-*` beside it.
    """
    old = path.parent / f".{path.name}.replaced-{uuid.uuid4().hex}"
    if path.exists():
        path.rename(old)
    built.rename(path)
    shutil.rmtree(old, ignore_errors=True)
