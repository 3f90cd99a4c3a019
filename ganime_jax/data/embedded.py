"""Build the embedded datasets (no download, no video files): synthetic anime and Moving MNIST.

- synthetic_anime: episodes rendered by `ganime_jax.data.synthetic_anime`; every shot goes
  through the same held-frame removal and clip cutting as real episodes (`staged_clips`).
  Episodes are the sources: the first `num_train_episodes` are "train", the next
  `num_test_episodes` "test" and the next `num_validation_episodes` (default none)
  "validation".
- moving_mnist: two digits bouncing in a 64x64 frame; train and test clips draw their digits
  from disjoint pools (`load_mnist_digits("train"/"test")`); validation clips (default none) are
  new clips of the training digits. Each clip is its own shot.

The validation split is for choosing settings (sampling, say) without looking at the test
clips. Every episode and clip is rendered from its own seed, so adding validation data leaves
the train and test splits as they were.

Both write `{name}_frames` and `{name}_clips` (frames: every frame of every clip).

Built on first use by a training run (`ensure_embedded_dataset`) or by
`python -m data_prep.embedded --dataset synthetic_anime --data_root datasets`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ganime_jax import writable
from ganime_jax.data import tfds_io
from ganime_jax.data.staged_clips import COUNT_KEYS, ClipCutter, ClipSettings, write_staged_datasets
from ganime_jax.data.moving_mnist import load_mnist_digits, render_moving_mnist_clip
from ganime_jax.data.synthetic_anime import SyntheticAnimeConfig, iter_episode_shots
from ganime_jax.errors import UserError

# In seed order: a clip's seed depends on its split's index here, so new splits go last.
SPLITS = ("train", "test", "validation")


def _sub_seed(seed: int, *path: int) -> int:
    """An independent seed for item `path` of a build seeded with `seed`."""
    return int(np.random.SeedSequence([seed, *path]).generate_state(1)[0])


# Processes that render synthetic-anime episodes (None: one per core), each given at least
# EPISODES_PER_PROCESS episodes (a process's start, about 3 s, renders some 15 episodes). Each
# episode is drawn from its own seed, so the dataset does not depend on either.
RENDER_PROCESSES: int | None = None
EPISODES_PER_PROCESS = 16


@dataclasses.dataclass(frozen=True)
class _EpisodeJob:
    episode: int
    seed: int
    shots: int
    min_drawings: int
    max_drawings: int
    config: SyntheticAnimeConfig
    clip_settings: ClipSettings
    stage_dir: str


def _render_episode(job: _EpisodeJob) -> tuple[int, str, int, dict[str, int]]:
    """Renders one episode, cuts its clips and stages them: (episode, staged file, clips,
    counts)."""
    cutter, num_frames = ClipCutter(job.clip_settings), 0
    for shot in iter_episode_shots(job.seed, job.shots, job.config, job.min_drawings, job.max_drawings):
        cutter.add_shot(shot.frames, num_frames)
        num_frames += len(shot.frames)
    clips = cutter.result(num_frames)
    stage = Path(job.stage_dir) / f"episode_{job.episode:04d}.npz"
    clips.save(stage)
    return job.episode, str(stage), clips.num_clips, clips.counts()


@contextlib.contextmanager
def _episode_results(jobs: list[_EpisodeJob]) -> Iterator[Iterator[tuple]]:
    """`_render_episode` of each job, in order: in a pool of fresh ("spawn": a forked JAX
    process can deadlock) processes when there are several cores and enough episodes for
    more than one, else in this process."""
    processes = min(RENDER_PROCESSES or os.cpu_count() or 1, len(jobs) // EPISODES_PER_PROCESS)
    if processes <= 1:
        yield map(_render_episode, jobs)
        return
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        yield pool.imap(_render_episode, jobs)


def build_synthetic_anime(
    data_root: str,
    name: str = "synthetic_anime",
    num_train_episodes: int = 60,
    num_test_episodes: int = 6,
    num_validation_episodes: int = 0,
    num_extra_train_episodes: int = 0,
    shots_per_episode: int = 20,
    min_drawings: int = 15,
    max_drawings: int = 40,
    seed: int = 0,
    height: int = 64,
    width: int = 128,
    min_frames: int = 15,
    max_frames: int = 25,
    held_threshold: float = 0.01,
) -> dict[str, int]:
    """Render episodes, drop held frames, cut clips, write both datasets; returns the counts.

    Episodes are numbered train, test, validation, then `num_extra_train_episodes` more train
    episodes, each rendered from its own seed: a larger training set keeps the held-out splits
    of the same `seed`, `num_train_episodes` and `num_test_episodes`.
    """
    if num_train_episodes < 1 or num_test_episodes < 1 or shots_per_episode < 1:
        raise UserError("synthetic_anime needs at least 1 train episode, 1 test episode and 1 shot each.")
    for setting, value in (("num_validation_episodes", num_validation_episodes),
                           ("num_extra_train_episodes", num_extra_train_episodes)):
        if value < 0:
            raise UserError(f"{setting}={value}: use 0 (none) or more.")
    settings_args = {k: v for k, v in locals().items() if k not in ("data_root", "name")}
    clip_settings = ClipSettings(
        height=height, width=width, min_frames=min_frames, max_frames=max_frames, held_threshold=held_threshold
    )
    config = SyntheticAnimeConfig(height=height, width=width)
    stage_dir = Path(data_root) / f".{name}.staging"
    stage_dir.mkdir(parents=True, exist_ok=True)
    counts = dict.fromkeys(COUNT_KEYS, 0)
    first_episode = {"train": 0, "test": num_train_episodes,
                     "validation": num_train_episodes + num_test_episodes}
    first_extra_train = first_episode["validation"] + num_validation_episodes
    num_episodes = first_extra_train + num_extra_train_episodes
    splits: dict[str, list[tuple[str, str]]] = {
        split: [] for split in SPLITS if split != "validation" or num_validation_episodes}
    jobs = [_EpisodeJob(episode, _sub_seed(seed, episode), shots_per_episode, min_drawings,
                        max_drawings, config, clip_settings, str(stage_dir))
            for episode in range(num_episodes)]
    with _episode_results(jobs) as results:
        for episode, stage, num_clips, clip_counts in tqdm(
                results, total=num_episodes, desc=f"{name}: render episodes", unit="episode"):
            for key, value in clip_counts.items():
                counts[key] += value
            if num_clips:
                split = ("train" if episode < first_episode["test"] or episode >= first_extra_train else
                         "test" if episode < first_episode["validation"] else "validation")
                splits[split].append((Path(stage).stem, stage))
    metadata = {"builder": "synthetic_anime", "settings": settings_args, "summary": counts}
    write_staged_datasets(data_root, name, splits, clip_settings, f"{name} (synthetic episodes).", metadata)
    shutil.rmtree(stage_dir, ignore_errors=True)
    return counts


def build_moving_mnist(
    data_root: str,
    name: str = "moving_mnist",
    num_train_clips: int = 10000,
    num_test_clips: int = 1000,
    num_validation_clips: int = 0,
    seed: int = 0,
    num_frames: int = 20,
    size: int = 64,
    num_digits: int = 2,
) -> dict[str, int]:
    """Render Moving MNIST clips (train/test digits disjoint; validation clips draw the training
    digits) and write both datasets."""
    if num_train_clips < 1 or num_test_clips < 1 or num_frames < 1:
        raise UserError("moving_mnist needs at least 1 train clip, 1 test clip and 1 frame per clip.")
    if num_validation_clips < 0:
        raise UserError(f"num_validation_clips={num_validation_clips}: use 0 (no validation split) or more.")
    settings_args = {k: v for k, v in locals().items() if k not in ("data_root", "name")}
    sizes = {"train": num_train_clips, "test": num_test_clips, "validation": num_validation_clips}
    splits = [split for split in SPLITS if sizes[split]]
    train_digits = load_mnist_digits("train")
    digits = {"train": train_digits, "test": load_mnist_digits("test"), "validation": train_digits}

    def clips(split: str) -> Iterator[tuple[int, np.ndarray]]:
        for i in tqdm(range(sizes[split]), desc=f"{name}: {split}", unit="clip"):
            seed_i = _sub_seed(seed, SPLITS.index(split), i)
            yield i, render_moving_mnist_clip(seed_i, digits[split], num_frames=num_frames, size=size,
                                              num_digits=num_digits)

    def clip_examples(split: str) -> Iterator[dict]:
        for i, frames in clips(split):
            source = f"{name}_{split}"
            yield {"frames": frames, "n_frames": len(frames), "source": source, "shot_index": i, "clip_index": 0}

    def frame_examples(split: str) -> Iterator[dict]:
        for i, frames in clips(split):
            for t, frame in enumerate(frames):
                yield {"frame": frame, "source": f"{name}_{split}", "shot_index": i, "frame_index": t}

    counts = {"clips": sum(sizes.values()), "clip_frames": sum(sizes.values()) * num_frames}
    metadata = {"builder": "moving_mnist", "settings": settings_args, "summary": counts}
    frame_shape = (size, size, 3)
    tfds_io.write_dataset(
        data_root, tfds_io.variant_name(name, "frames"), "frames",
        {s: frame_examples(s) for s in splits}, frame_shape,
        description="Frames of Moving MNIST clips.", metadata=metadata,
    )
    tfds_io.write_dataset(
        data_root, tfds_io.variant_name(name, "clips"), "clips",
        {s: clip_examples(s) for s in splits}, frame_shape,
        description=f"Moving MNIST clips of {num_frames} frames.", metadata=metadata,
    )
    return counts


BUILDERS: dict[str, Callable[..., dict[str, int]]] = {
    "synthetic_anime": build_synthetic_anime,
    "moving_mnist": build_moving_mnist,
}


def _builder_settings(kind: str, settings: dict) -> dict:
    """Check `settings` against the builder's parameters; Moving MNIST takes height=width=size."""
    settings = dict(settings)
    if kind == "moving_mnist":
        sides = {side: settings.pop(side) for side in ("height", "width") if side in settings}
        sides.update({"size": settings["size"]} if "size" in settings else {})
        if len(set(sides.values())) > 1:
            raise UserError(f"moving_mnist frames are square: got {sides}; set them equal.")
        if sides:
            settings["size"] = next(iter(sides.values()))
    allowed = set(inspect.signature(BUILDERS[kind]).parameters) - {"data_root", "name"}
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise UserError(f"unknown {kind} settings {unknown}; allowed: {sorted(allowed)}.")
    return settings


def _builder_defaults(kind: str) -> dict:
    """The default value of each of builder `kind`'s settings."""
    parameters = inspect.signature(BUILDERS[kind]).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


_SPLIT_SIZE_SETTINGS = {"synthetic_anime": "num_{}_episodes", "moving_mnist": "num_{}_clips"}


def planned_splits(kind: str, **settings) -> list[str]:
    """The splits that `ensure_embedded_dataset` builds for `kind` with `settings` (those with
    episodes or clips), so that a config can be checked before anything is rendered."""
    if kind not in BUILDERS:
        raise UserError(f"unknown embedded dataset {kind!r}; choose one of {sorted(BUILDERS)}.")
    values = {**_builder_defaults(kind), **_builder_settings(kind, settings)}
    return [split for split in SPLITS if values[_SPLIT_SIZE_SETTINGS[kind].format(split)]]


def ensure_embedded_dataset(data_root: str, name: str, kind: str, **settings) -> None:
    """Build embedded dataset `kind` as `{name}_frames`/`{name}_clips` unless both exist.

    An existing dataset built with other values of the given settings is an error (rebuilding
    silently would change what a run trains on; reusing it would ignore the config).
    """
    if kind not in BUILDERS:
        raise UserError(f"unknown embedded dataset {kind!r}; choose one of {sorted(BUILDERS)}.")
    settings = _builder_settings(kind, settings)
    names = [tfds_io.variant_name(name, "frames"), tfds_io.variant_name(name, "clips")]
    if all(tfds_io.dataset_exists(data_root, n) for n in names):
        stored = tfds_io.read_metadata(data_root, names[1])
        # A dataset built before a setting existed was built with that setting's default.
        built = {**_builder_defaults(kind), **stored.get("settings", {})}
        differ = {k: (built.get(k), v) for k, v in settings.items() if built.get(k) != v}
        if stored.get("builder") != kind or differ:
            raise UserError(
                f"dataset {name} in {data_root} was built as {stored.get('builder')} with other settings "
                f"(stored, wanted: {differ}); delete {tfds_io.dataset_path(data_root, names[1])} and "
                f"{tfds_io.dataset_path(data_root, names[0])} or use another dataset name."
            )
        return
    writable.check_folder(data_root, "data_root")
    BUILDERS[kind](data_root, name, **settings)
