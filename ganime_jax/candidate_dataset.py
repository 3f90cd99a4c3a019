"""Candidate datasets: what a trained pair draws for true clips, the training data of a stage-3
refiner that reads candidate statistics (`config.model.candidate_statistics`).

    python -m data_prep.candidates --bundle=ganime_jax/assets/moving_mnist --data_root=datasets \
        --num_clips=train:1024 --num_clips=validation:256

For the first clips of each split of the bundle's dataset (`{dataset}_clips`; clips of at least
the eval's `num_frames` frames, cut to that many) the bundle's GPT draws K candidates as its
sample config says (top-k, direction; kept by their medoid, which is how generation draws for
such a refiner) and `{dataset}_candidates` stores each clip's true frames beside what was drawn
(`tfds_io` kind "candidates"). A refiner trained on it learns on the generator's own output.

Resumable: each split is drawn in shards of `clips_per_shard` clips, each saved atomically in
`<data_root>/.{dataset}_candidates.staging/`; a re-run with the same bundle and settings skips
the finished shards. The dataset is written atomically from the shards, then the staging folder
is removed.
"""
from __future__ import annotations

import math
import pathlib
import shutil
import zlib
from collections.abc import Iterator, Mapping

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from ganime_jax import bundle, generation, sample, writable
from ganime_jax.data import tfds_io
from ganime_jax.errors import UserError
from ganime_jax.train.token_dataset import prepare_staging, tokenizer_metadata

DEFAULT_CLIPS_PER_SHARD = 64
DEFAULT_DRAW_BATCH_SIZE = 16  # clips drawn together
DEFAULT_SEED = 0


def build_command(bundle_dir: str | pathlib.Path, data_root: str) -> str:
    return f"python -m data_prep.candidates --bundle={bundle_dir} --data_root={data_root}"


def candidate_frames(truth: np.ndarray, drawn: generation.DrawnInBetweens) -> np.ndarray:
    """uint8 (B, T, H, W, 15) "candidates" frames (`tfds_io.CANDIDATE_IMAGES` on the channel
    axis) of true clips (B, T, H, W, 3) and what was drawn for their in-betweens."""
    decoded = np.concatenate([drawn.decoded_first[:, None], drawn.in_betweens,
                              drawn.decoded_last[:, None]], axis=1)
    statistics = np.zeros((*truth.shape[:-1], drawn.statistics.shape[-1]), np.uint8)
    statistics[:, 1:-1] = drawn.statistics
    return np.concatenate([truth, decoded, statistics], axis=-1)


def _shard_path(staging: pathlib.Path, split: str, index: int) -> pathlib.Path:
    return staging / f"{split}-{index:05d}.npz"


def _stage_split(generator: sample.Generator, config: ml_collections.ConfigDict,
                 source: tfds_io.SplitSource, split: str, count: int, staging: pathlib.Path,
                 clips_per_shard: int, draw_batch_size: int, rng: jax.Array) -> int:
    """Draws the missing shards of one split's first `count` long-enough clips; returns the
    number of shards."""
    num_frames = config.evaluate.num_frames
    keep = []
    for i in range(len(source)):
        if len(keep) == count:
            break
        if source[i]["n_frames"] >= num_frames:
            keep.append(i)
    num_shards = math.ceil(len(keep) / clips_per_shard)
    sampling = sample.sampling_settings(config)
    with tqdm(total=len(keep), desc=f"draw {split}", unit="clip", dynamic_ncols=True) as progress:
        for shard in range(num_shards):
            indices = keep[shard * clips_per_shard:(shard + 1) * clips_per_shard]
            path = _shard_path(staging, split, shard)
            if not path.is_file():
                records = [source[i] for i in indices]
                truth = np.stack([np.asarray(r["frames"])[:num_frames] for r in records])
                frames = []
                for start in range(0, len(truth), draw_batch_size):
                    clips = truth[start:start + draw_batch_size]
                    key = jax.random.fold_in(jax.random.fold_in(rng, shard), start)
                    drawn = generation.draw_in_betweens(
                        generator.tokenizer, generator.transformer, generator.params,
                        clips[:, 0], clips[:, -1], num_frames, key,
                        decode_batch_size=generation.default_decode_batch_size(),
                        **sample.choice(config), with_statistics=True, with_decoded_ends=True,
                        **sampling)
                    frames.append(candidate_frames(clips, drawn))
                tmp = path.with_name(path.stem + ".tmp.npz")
                np.savez(tmp, frames=np.concatenate(frames),
                         source=np.asarray([r["source"] for r in records], np.str_),
                         shot_index=np.asarray([r["shot_index"] for r in records], np.int64),
                         clip_index=np.asarray([r["clip_index"] for r in records], np.int64))
                tmp.replace(path)
            progress.update(len(indices))
    return num_shards


def _staged_examples(staging: pathlib.Path, split: str, num_shards: int) -> Iterator[dict]:
    for shard in range(num_shards):
        with np.load(_shard_path(staging, split, shard), allow_pickle=False) as data:
            for i, frames in enumerate(data["frames"]):
                yield {"frames": frames, "n_frames": len(frames), "source": str(data["source"][i]),
                       "shot_index": int(data["shot_index"][i]),
                       "clip_index": int(data["clip_index"][i])}


def check_bundle_choice(config: ml_collections.ConfigDict, bundle_dir: str | pathlib.Path) -> None:
    """The bundle must draw K > 1 candidates kept by their medoid: the statistics are theirs."""
    choice = sample.choice(config)
    if choice["candidates"] < 2 or choice["selection"] != "medoid":
        raise UserError(f"the bundle in {bundle_dir} samples candidates={choice['candidates']} "
                        f"kept by {choice['selection']!r}; candidate statistics need K > 1 "
                        "candidates kept by their medoid: export it with --sample=candidates=8 "
                        "--sample=selection=medoid.")


def build_candidate_dataset(bundle_dir: str | pathlib.Path, data_root: str,
                            num_clips: Mapping[str, int], *,
                            clips_per_shard: int = DEFAULT_CLIPS_PER_SHARD,
                            draw_batch_size: int = DEFAULT_DRAW_BATCH_SIZE,
                            seed: int = DEFAULT_SEED) -> pathlib.Path:
    """Draws `{dataset}_candidates` from `{dataset}_clips` with a bundle's GPT (its refiner
    unused): `num_clips[split]` clips of each split named there. Returns its path."""
    writable.check_folder(data_root, "data_root")
    run = bundle.load_sample_run(bundle_dir)
    config = run.config
    check_bundle_choice(config, bundle_dir)
    if clips_per_shard < 1 or draw_batch_size < 1 or min(num_clips.values(), default=0) < 1:
        raise UserError("clips_per_shard, draw_batch_size and every split's num_clips must be "
                        f">= 1, got {clips_per_shard}, {draw_batch_size}, {dict(num_clips)}.")
    source_name = tfds_io.variant_name(config.data.dataset, "clips")
    splits = tfds_io.split_names(data_root, source_name)
    missing = sorted(set(num_clips) - set(splits))
    if missing:
        raise UserError(f"{tfds_io.dataset_path(data_root, source_name)} has no split(s) "
                        f"{missing} (it has {splits}); name splits it has.")
    config.sample.refiner_workdir = ""  # the candidates are what the GPT draws, unrefined
    generator = sample.load_generator(config, run.workdir)
    tokenizer = tokenizer_metadata(generator.tokenizer)
    settings = {"bundle": str(pathlib.Path(bundle_dir).absolute()), "gpt_step": generator.step,
                "tokenizer": tokenizer["fingerprint"], **sample.choice(config),
                "sampling": sample.sampling_settings(config),
                "num_frames": config.evaluate.num_frames, "num_clips": dict(num_clips),
                "clips_per_shard": clips_per_shard, "draw_batch_size": draw_batch_size,
                "seed": seed}
    name = tfds_io.variant_name(config.data.dataset, "candidates")
    staging = pathlib.Path(data_root) / f".{name}.staging"
    prepare_staging(staging, settings)
    rng = jax.random.key(seed)
    num_shards = {}
    for split, count in num_clips.items():
        source = tfds_io.open_split(data_root, source_name, split)
        # Keyed on the split's name: its draws do not depend on which other splits are built.
        split_rng = jax.random.fold_in(rng, zlib.crc32(split.encode()) % 2**31)
        num_shards[split] = _stage_split(generator, config, source, split, count, staging,
                                         clips_per_shard, draw_batch_size, split_rng)
    height, width, channels = generator.tokenizer.frame_shape
    path = tfds_io.write_dataset(
        data_root, name, "candidates",
        {split: _staged_examples(staging, split, num_shards[split]) for split in num_clips},
        (height, width, channels * len(tfds_io.CANDIDATE_IMAGES)),
        description=f"Candidates drawn for {source_name} by the bundle in {bundle_dir}.",
        metadata={"tokenizer": tokenizer, "clips_dataset": source_name, "draws": settings})
    shutil.rmtree(staging, ignore_errors=True)
    return path
