"""Render synthetic anime episodes as video files, each with a JSON sidecar of its true cuts.

    python -m data_prep.render_episodes --output_dir=DIR --num_episodes=2 --minutes=5
        --seed=0 --fps=24 --height=64 --width=128

writes DIR/episode_0000.mp4 and DIR/episode_0000.json ({"cut_frames": [...], ...}): test data
for shot detection and a stand-in for real episodes in the dataset builders. Every shot lasts
at least `--min_drawings` frames (more than PySceneDetect's minimum scene length of 15).
"""
from __future__ import annotations

import json
import os

import numpy as np
from absl import flags
from tqdm import tqdm

from ganime_jax import writable
from ganime_jax.commands import run_command
from ganime_jax.data.synthetic_anime import SyntheticAnimeConfig, iter_episode_shots
from ganime_jax.data.video_io import VideoWriter, sibling_temp_path
from ganime_jax.errors import UserError


def episode_seed(seed: int, index: int) -> int:
    """Seed of episode `index`, so that runs with neighbouring seeds share no episode."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _write_json(path: str, payload: dict) -> None:
    temp = sibling_temp_path(path)
    try:
        with open(temp, "w") as f:
            json.dump(payload, f, indent=1)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def render_episode_file(path: str, seed: int, num_frames: int, config: SyntheticAnimeConfig,
                        fps: float = 24.0, min_drawings: int = 16, max_drawings: int = 60,
                        quality: int = 10, progress: tqdm | None = None) -> list[int]:
    """Writes one episode of `num_frames` frames to `path` and its sidecar; returns the cuts.

    The sidecar (same name, .json) holds `cut_frames` (first frame of every shot after the
    first), `shot_bounds` ([start, end) per shot), seed, fps, size and frame count.
    """
    bounds = []
    with VideoWriter(path, fps, quality) as writer:
        for shot in iter_episode_shots(seed, None, config, min_drawings, max_drawings,
                                       num_frames=num_frames):
            start = writer.num_frames
            for frame in shot.frames:
                writer.write(frame)
            bounds.append((start, writer.num_frames))
            if progress is not None:
                progress.update(len(shot.frames))
    cuts = [start for start, _ in bounds[1:]]
    _write_json(os.path.splitext(path)[0] + ".json", {
        "video": os.path.basename(path), "seed": seed, "fps": fps, "num_frames": num_frames,
        "height": config.height, "width": config.width, "cut_frames": cuts,
        "shot_bounds": bounds})
    return cuts


def render_episodes(output_dir: str, num_episodes: int, num_frames: int, seed: int,
                    config: SyntheticAnimeConfig, fps: float = 24.0, min_drawings: int = 16,
                    max_drawings: int = 60, quality: int = 10, suffix: str = ".mp4") -> list[str]:
    """Renders `num_episodes` episodes into `output_dir`; returns the video paths."""
    if num_episodes < 1 or num_frames < 1:
        raise UserError(f"need at least one episode of at least one frame, got num_episodes="
                        f"{num_episodes}, {num_frames} frames per episode")
    writable.check_folder(output_dir, "--output_dir")
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    with tqdm(total=num_episodes * num_frames, unit="frame", desc="render episodes") as progress:
        for index in range(num_episodes):
            path = os.path.join(output_dir, f"episode_{index:04d}{suffix}")
            render_episode_file(path, episode_seed(seed, index), num_frames, config, fps,
                                min_drawings, max_drawings, quality, progress)
            paths.append(path)
    return paths


def define_flags() -> None:
    """The CLI flags, defined only when run as a script (importers keep their own flags)."""
    flags.DEFINE_string("output_dir", None, "Folder for the episodes (created).")
    flags.DEFINE_integer("num_episodes", 1, "How many episodes to render.")
    flags.DEFINE_float("minutes", 5.0, "Length of every episode in minutes.")
    flags.DEFINE_integer("seed", 0, "Seed; episode i uses a seed derived from (seed, i).")
    flags.DEFINE_float("fps", 24.0, "Frame rate of the videos.")
    flags.DEFINE_integer("height", 64, "Frame height in pixels (even).")
    flags.DEFINE_integer("width", 128, "Frame width in pixels (even).")
    flags.DEFINE_integer("min_drawings", 16, "Fewest drawings (and frames) a shot.")
    flags.DEFINE_integer("max_drawings", 60, "Most drawings a shot.")
    flags.DEFINE_integer("quality", 10, "H.264 crf (lower = closer to the rendering).")
    flags.DEFINE_enum("suffix", ".mp4", [".mp4", ".mkv", ".webm", ".avi"], "Video container.")


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    if f.output_dir is None:
        raise UserError("--output_dir is required: the folder to write the episodes to")
    if not f.minutes > 0 or not f.fps > 0:
        raise UserError(f"--minutes and --fps must be positive, got {f.minutes}, {f.fps}")
    config = SyntheticAnimeConfig(height=f.height, width=f.width)
    num_frames = round(f.minutes * 60 * f.fps)
    render_episodes(f.output_dir, f.num_episodes, num_frames, f.seed, config, f.fps,
                    f.min_drawings, f.max_drawings, f.quality, f.suffix)


if __name__ == "__main__":
    define_flags()
    run_command(main)
