"""Video files (anime episodes) -> `{name}_frames` and `{name}_clips` TFDS datasets.

Pipeline per file (in a pool of worker processes, see `episode_file.py`): decode once, detect
shots (PySceneDetect ContentDetector), drop held frames per shot, centre-crop and resize, cut
each shot into clips of min..max frames, stage the clips to an npz. Then the files are split
train/test by file (no episode in both) and both datasets are written atomically. Staged files
survive an interrupted run, so a re-run only processes the files not yet done.

    python -m data_prep.episodes --input /videos --data_root /data --name kny
"""
from __future__ import annotations

import dataclasses
import glob
import multiprocessing
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from absl import flags
from tqdm import tqdm

from data_prep.episode_file import StageResult, stage_file
from ganime_jax.data.staged_clips import COUNT_KEYS, ClipSettings, FileClips, write_staged_datasets
from ganime_jax import writable
from ganime_jax.commands import run_command
from ganime_jax.data import clip_ops, tfds_io
from ganime_jax.data.shot_detection import DEFAULT_THRESHOLD
from ganime_jax.errors import UserError

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi")


@dataclasses.dataclass(frozen=True)
class PrepSettings:
    clip: ClipSettings = ClipSettings()
    test_fraction: float = 0.1
    seed: int = 0
    workers: int = 2

    def __post_init__(self):
        if self.workers < 1:
            raise UserError(f"workers must be >= 1, got {self.workers}.")
        if not 0.0 < self.test_fraction < 1.0:
            raise UserError(f"test_fraction must be in (0, 1), got {self.test_fraction}.")


@dataclasses.dataclass
class PrepSummary:
    """What a run did; printed at the end and stored in both datasets' metadata."""

    name: str
    files_read: int = 0
    files_reused: int = 0  # read in an earlier, interrupted run (staged results reused)
    files_skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> reason
    files_short: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> note
    counts: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(COUNT_KEYS, 0))
    split_sources: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    split_clips: dict[str, int] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def format(self) -> str:
        c = self.counts
        lines = [
            f"data_prep summary for {self.name!r}",
            f"  files read:               {self.files_read} ({self.files_reused} reused from staging)",
            f"  files skipped:            {len(self.files_skipped)}",
            *(f"    {path}: {reason}" for path, reason in self.files_skipped.items()),
            f"  files read in part:       {len(self.files_short)}",
            *(f"    {path}: {note}" for path, note in self.files_short.items()),
            f"  frames read:              {c['frames_read']}",
            f"  shots:                    {c['shots']}",
            f"  frames dropped as held:   {c['frames_held']}",
            f"  frames dropped leftover:  {c['frames_leftover']} (shots or shot tails shorter than a clip)",
            f"  clips:                    {c['clips']} ({c['clip_frames']} frames)",
            *(
                f"    {split}: {self.split_clips[split]} clips from {len(sources)} file(s)"
                for split, sources in self.split_sources.items()
            ),
        ]
        return "\n".join(lines)


def find_videos(inputs: Sequence[str]) -> tuple[list[Path], dict[str, str]]:
    """Expand folders (recursively) and globs into video files; other files come back skipped."""
    videos, skipped = [], {}
    for pattern in inputs:
        if os.path.isdir(pattern):
            matches = [str(p) for p in Path(pattern).rglob("*") if p.is_file()]
        else:
            matches = [m for m in glob.glob(pattern, recursive=True) if os.path.isfile(m)]
        if not matches:
            raise UserError(f"--input {pattern!r} matches no file; give a folder, a file or a glob.")
        for match in matches:
            if match.lower().endswith(VIDEO_EXTENSIONS):
                videos.append(Path(match))
            else:
                skipped[match] = f"not a video file (expected one of {', '.join(VIDEO_EXTENSIONS)})"
    return sorted(set(videos)), skipped


def source_names(paths: Sequence[Path]) -> dict[Path, str]:
    """Name each file by its path relative to the inputs' common folder (unique, readable)."""
    if len(paths) <= 1:
        return {p: p.name for p in paths}
    root = os.path.commonpath([str(p.resolve().parent) for p in paths])
    return {p: os.path.relpath(p.resolve(), root) for p in paths}


def staging_dir(data_root: str, name: str) -> Path:
    """Where per-file results wait between runs (hidden, so never taken for a dataset)."""
    return Path(data_root) / f".{name}.staging"


def _stage_all(videos: list[Path], stage_dir: Path, settings: PrepSettings) -> list[StageResult]:
    """Run `stage_file` on every video; a pool of `settings.workers` processes when > 1."""
    jobs = [(str(p), str(stage_dir), settings.clip) for p in videos]
    progress = tqdm(total=len(jobs), desc="episodes", unit="file")
    results = []

    def record(result: StageResult) -> None:
        results.append(result)
        progress.update(1)
        progress.set_postfix(clips=sum(r.counts.get("clips", 0) for r in results))

    if settings.workers == 1 or len(jobs) <= 1:
        for job in jobs:
            record(stage_file(*job))
    else:
        # "spawn": never fork a process that may hold JAX/XLA threads.
        context = multiprocessing.get_context("spawn")
        with context.Pool(min(settings.workers, len(jobs))) as pool:
            for result in pool.imap_unordered(_stage_job, jobs):
                record(result)
    progress.close()
    return results


def _stage_job(job: tuple[str, str, ClipSettings]) -> StageResult:
    return stage_file(*job)


def prepare_episodes(
    inputs: Sequence[str], data_root: str, name: str, settings: PrepSettings = PrepSettings()
) -> PrepSummary:
    """Build `{name}_frames` and `{name}_clips` under `data_root` from the video files in `inputs`."""
    for suffix in ("frames", "clips"):
        tfds_io.dataset_path(data_root, f"{name}_{suffix}")  # validates the name early
    writable.check_folder(data_root, "--data_root")
    videos, skipped = find_videos(inputs)
    summary = PrepSummary(name=name, files_skipped=skipped)
    stage_dir = staging_dir(data_root, name)
    stage_dir.mkdir(parents=True, exist_ok=True)
    sources = source_names(videos)
    usable: dict[str, str] = {}  # source -> stage of files that gave clips
    results = {result.path: result for result in _stage_all(videos, stage_dir, settings)}
    for path in videos:
        result = results[str(path)]
        if result.skip_reason is not None:
            summary.files_skipped[str(path)] = result.skip_reason
            continue
        summary.files_read += 1
        summary.files_reused += result.reused
        if result.short_read is not None:
            summary.files_short[str(path)] = result.short_read
        for key in COUNT_KEYS:
            summary.counts[key] += result.counts[key]
        if result.counts["clips"] > 0:
            usable[sources[path]] = result.stage
    _write(data_root, name, usable, settings, summary)
    shutil.rmtree(stage_dir, ignore_errors=True)
    return summary


def _write(data_root: str, name: str, usable: dict[str, str], settings: PrepSettings, summary: PrepSummary) -> None:
    if len(usable) < 2:
        print(summary.format())
        raise UserError(
            f"{len(usable)} file(s) gave usable clips; at least 2 are needed to split train/test by "
            "episode. Add episodes, or check the skipped files and --min_frames above."
        )
    splits = clip_ops.assign_splits(list(usable), settings.test_fraction, settings.seed)
    by_split = {split: [(s, usable[s]) for s in sorted(usable) if splits[s] == split] for split in ("train", "test")}
    summary.split_sources = {split: [s for s, _ in stages] for split, stages in by_split.items()}
    summary.split_clips = {
        split: sum(FileClips.load(Path(stage), with_frames=False).num_clips for _, stage in stages)
        for split, stages in by_split.items()
    }
    metadata = {"settings": dataclasses.asdict(settings), "summary": summary.to_dict()}
    write_staged_datasets(data_root, name, by_split, settings.clip, f"{name} (episodes).", metadata)


FLAGS = flags.FLAGS


def define_flags() -> None:
    """The CLI flags, defined only when run as a script (importers keep their own flags)."""
    clip, prep = ClipSettings(), PrepSettings()
    flags.DEFINE_multi_string("input", None, "Folder, file or glob of episodes (mp4/mkv/webm/avi); repeatable.")
    flags.DEFINE_string("data_root", None, "Folder that holds the datasets.")
    flags.DEFINE_string("name", None, "Dataset name prefix: writes {name}_frames and {name}_clips.")
    flags.DEFINE_integer("height", clip.height, "Frame height (frames are centre-cropped to the aspect, then resized).")
    flags.DEFINE_integer("width", clip.width, "Frame width.")
    flags.DEFINE_integer("min_frames", clip.min_frames, "Shortest clip (kept frames); shorter shot tails are dropped.")
    flags.DEFINE_integer("max_frames", clip.max_frames, "Longest clip.")
    flags.DEFINE_float("held_threshold", clip.held_threshold,
                       "A frame whose mean |difference| ([0, 1] pixels) to the last kept frame is below this is held.")
    flags.DEFINE_float("shot_threshold", clip.shot_threshold,
                       f"ContentDetector threshold (PySceneDetect's {DEFAULT_THRESHOLD} if unset).")
    flags.DEFINE_integer("min_scene_len", clip.min_scene_len, "Shortest shot in frames (shot detection).")
    flags.DEFINE_float("test_fraction", prep.test_fraction, "Fraction of the files that go to the test split.")
    flags.DEFINE_integer("seed", prep.seed, "Seed of the train/test assignment.")
    flags.DEFINE_integer("workers", prep.workers, "Worker processes (one file each).")

def main(argv: Sequence[str]) -> None:
    del argv
    for flag in ("input", "data_root", "name"):
        if not FLAGS[flag].value:
            raise UserError(f"--{flag} is required; see --helpshort.")
    clip = ClipSettings(
        height=FLAGS.height, width=FLAGS.width, min_frames=FLAGS.min_frames, max_frames=FLAGS.max_frames,
        held_threshold=FLAGS.held_threshold, shot_threshold=FLAGS.shot_threshold,
        min_scene_len=FLAGS.min_scene_len,
    )
    settings = PrepSettings(clip=clip, test_fraction=FLAGS.test_fraction, seed=FLAGS.seed, workers=FLAGS.workers)
    summary = prepare_episodes(FLAGS.input, FLAGS.data_root, FLAGS.name, settings)
    print(summary.format())


if __name__ == "__main__":
    define_flags()
    run_command(main)
