"""Encode a clips dataset into a video-token dataset with a frozen stage-1 tokenizer.

A stage-2 run builds it on first use (`ensure_token_dataset`); `python -m data_prep.tokens`
builds it by hand. It reads `{dataset}_clips` and writes `{dataset}_tokens` ("tokens" examples, see
`ganime_jax.data.tfds_io`): every frame encoded once here, so stage 2 trains on tokens alone.
Frames of many clips are encoded together in fixed-size batches split over all devices.

Resumable: each split is encoded in shards of `clips_per_shard` clips, each saved atomically in
`<data_root>/.{dataset}_tokens.staging/`; a re-run with the same tokenizer skips the finished
shards (another tokenizer starts over). The dataset is written atomically from the shards and
the staging folder removed.
"""
from __future__ import annotations

import json
import math
import pathlib
import shutil
from collections.abc import Iterator, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from ganime_jax import mesh as mesh_lib, writable
from ganime_jax.data import tfds_io
from ganime_jax.errors import UserError
from ganime_jax.tokenizer import Tokenizer, load_tokenizer

INT16_MAX_CODES = 32767  # codebooks up to this size store their tokens as int16
MANIFEST_FILE = "manifest.json"
DEFAULT_BATCH_SIZE = 64
DEFAULT_CLIPS_PER_SHARD = 128


def token_dtype(num_embeddings: int) -> str:
    return "int16" if num_embeddings <= INT16_MAX_CODES else "int32"


def build_command(data_root: str, dataset: str, tokenizer_workdir: str | pathlib.Path) -> str:
    return (f"python -m data_prep.tokens --tokenizer_workdir={tokenizer_workdir} "
            f"--data_root={data_root} --dataset={dataset}")


def encode_clips(tokenizer: Tokenizer, clips: Sequence[np.ndarray], batch_size: int,
                 dtype: str) -> list[np.ndarray]:
    """Tokens (T_i, h*w) of each clip; all frames go through `batch_size`-frame batches.

    The last batch is zero-padded, so one compiled encoder serves every batch.
    """
    lengths = [len(clip) for clip in clips]
    frames = np.concatenate(clips)
    padded = math.ceil(len(frames) / batch_size) * batch_size
    frames = np.concatenate([frames, np.zeros((padded - len(frames), *frames.shape[1:]),
                                              frames.dtype)])
    pending = [tokenizer.encode(frames[i:i + batch_size]) for i in range(0, padded, batch_size)]
    tokens = np.concatenate([np.asarray(batch) for batch in pending])[:sum(lengths)]
    return np.split(tokens.astype(dtype), np.cumsum(lengths)[:-1])


def _shard_path(staging: pathlib.Path, split: str, index: int) -> pathlib.Path:
    return staging / f"{split}-{index:05d}.npz"


def prepare_staging(staging: pathlib.Path, manifest: dict) -> None:
    """Keeps the staged shards of a previous run with the same manifest, else starts over."""
    path = staging / MANIFEST_FILE
    if staging.exists():
        previous = json.loads(path.read_text()) if path.is_file() else None
        if previous == manifest:
            return
        logging.warning("%s holds shards of another tokenizer or dataset; starting over", staging)
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(path)


def _stage_split(source: tfds_io.SplitSource, split: str, staging: pathlib.Path,
                 tokenizer: Tokenizer, batch_size: int, clips_per_shard: int, dtype: str) -> int:
    """Encodes the missing shards of one split; returns the number of shards."""
    num_shards = math.ceil(len(source) / clips_per_shard)
    progress = tqdm(total=len(source), desc=f"encode {split}", unit="clip", dynamic_ncols=True)
    with progress:
        for shard in range(num_shards):
            start, stop = shard * clips_per_shard, min((shard + 1) * clips_per_shard, len(source))
            path = _shard_path(staging, split, shard)
            if not path.is_file():
                records = [source[i] for i in range(start, stop)]
                tokens = encode_clips(tokenizer, [r["frames"] for r in records], batch_size, dtype)
                tmp = path.with_name(path.stem + ".tmp.npz")
                np.savez(tmp, tokens=np.concatenate(tokens),
                         lengths=np.asarray([len(t) for t in tokens], np.int64),
                         source=np.asarray([r["source"] for r in records], np.str_),
                         shot_index=np.asarray([r["shot_index"] for r in records], np.int64),
                         clip_index=np.asarray([r["clip_index"] for r in records], np.int64))
                tmp.replace(path)
            progress.update(stop - start)
    return num_shards


def _staged_examples(staging: pathlib.Path, split: str, num_shards: int) -> Iterator[dict]:
    for shard in range(num_shards):
        with np.load(_shard_path(staging, split, shard), allow_pickle=False) as data:
            offsets = np.concatenate([[0], np.cumsum(data["lengths"])])
            tokens = data["tokens"]
            for i, length in enumerate(data["lengths"]):
                yield {"tokens": tokens[offsets[i]:offsets[i + 1]], "n_frames": int(length),
                       "source": str(data["source"][i]), "shot_index": int(data["shot_index"][i]),
                       "clip_index": int(data["clip_index"][i])}


def _default_mesh() -> jax.sharding.Mesh:
    return mesh_lib.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1}),
                              jax.local_devices())


def tokenizer_metadata(tokenizer: Tokenizer) -> dict:
    """What a token dataset records about the tokenizer it was encoded with."""
    return {"fingerprint": tokenizer.fingerprint(), "workdir": str(tokenizer.workdir.absolute()),
            "step": tokenizer.step, "num_embeddings": tokenizer.num_embeddings,
            "grid_shape": list(tokenizer.grid_shape), "frame_shape": list(tokenizer.frame_shape)}


def build_token_dataset(data_root: str, dataset: str, tokenizer_workdir: str | pathlib.Path, *,
                        batch_size: int = DEFAULT_BATCH_SIZE,
                        clips_per_shard: int = DEFAULT_CLIPS_PER_SHARD,
                        mesh: jax.sharding.Mesh | None = None) -> pathlib.Path:
    """Encodes `{dataset}_clips` into `{dataset}_tokens` (resuming staged shards); returns its path.

    Frame batches of `batch_size` are split over `mesh` (default: every local device).
    """
    writable.check_folder(data_root, "data_root")
    source_name = tfds_io.variant_name(dataset, "clips")
    summary = tfds_io.dataset_summary(data_root, source_name)
    if summary["kind"] != "clips":
        raise UserError(f"{tfds_io.dataset_path(data_root, source_name)} holds "
                        f"{summary['kind']}, not clips; give the dataset of a clips build.")
    if clips_per_shard < 1:
        raise UserError(f"clips_per_shard must be >= 1, got {clips_per_shard}.")
    mesh = _default_mesh() if mesh is None else mesh
    if batch_size < 1 or batch_size % mesh.size:
        raise UserError(f"encoding batch size {batch_size} must be a positive multiple of the "
                        f"{mesh.size} devices; pass another --batch_size.")
    tokenizer = load_tokenizer(tokenizer_workdir, mesh)
    if tuple(summary["frame_shape"]) != tokenizer.frame_shape:
        raise UserError(
            f"the clips of {source_name} are {tuple(summary['frame_shape'])} but the tokenizer "
            f"in {tokenizer_workdir} takes {tokenizer.frame_shape} frames; use a matching pair.")
    info = tokenizer_metadata(tokenizer)
    name = tfds_io.variant_name(dataset, "tokens")
    staging = pathlib.Path(data_root) / f".{name}.staging"
    splits = tfds_io.split_names(data_root, source_name)
    prepare_staging(staging, {"tokenizer": info["fingerprint"], "clips": summary,
                               "clips_per_shard": clips_per_shard})
    dtype = token_dtype(tokenizer.num_embeddings)
    num_shards = {}
    for split in splits:
        source = tfds_io.open_split(data_root, source_name, split)
        num_shards[split] = _stage_split(source, split, staging, tokenizer, batch_size,
                                         clips_per_shard, dtype)
    path = tfds_io.write_dataset(
        data_root, name, "tokens",
        {split: _staged_examples(staging, split, num_shards[split]) for split in splits},
        (tokenizer.frame_tokens,),
        description=f"VQ-GAN tokens of {source_name}.",
        metadata={"tokenizer": info, "clips_dataset": source_name}, dtype=dtype)
    shutil.rmtree(staging, ignore_errors=True)
    return path


def ensure_token_dataset(data_root: str, dataset: str, tokenizer_workdir: str | pathlib.Path,
                         **build_kwargs) -> pathlib.Path:
    """Builds `{dataset}_tokens` unless it exists; an existing one must match the tokenizer."""
    name = tfds_io.variant_name(dataset, "tokens")
    if not tfds_io.dataset_exists(data_root, name):
        return build_token_dataset(data_root, dataset, tokenizer_workdir, **build_kwargs)
    stored = tfds_io.read_metadata(data_root, name).get("tokenizer", {})
    current = load_tokenizer(tokenizer_workdir).fingerprint()
    if stored.get("fingerprint") != current:
        path = tfds_io.dataset_path(data_root, name)
        raise UserError(
            f"{path} was encoded with another tokenizer (checkpoint step {stored.get('step')} of "
            f"{stored.get('workdir')}), not the one in {tokenizer_workdir}; rebuild it with "
            f"`{build_command(data_root, dataset, tokenizer_workdir)}`.")
    return tfds_io.dataset_path(data_root, name)
