"""`python main.py --mode=sample`: clips generated between a first and a last frame.

With `--first=A.png --last=B.png` it writes one generated clip; without them it takes held-out
clips of the clips dataset and writes a grid video, the generated clips in the top row above
their ground truth. Each run writes an MP4 and a GIF (atomically) and prints their paths.
The frozen tokenizer comes from `config.tokenizer.workdir`, the transformer from the newest
checkpoint in the run's workdir (only its parameters are read).
"""
import dataclasses
import pathlib
import time
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from ganime_jax import bundle, checkpointing, generation, writable
from ganime_jax.data import tfds_io, video_io
from ganime_jax.errors import UserError
from ganime_jax.images import load_frame_pair
from ganime_jax.models.frame_layouts import Transformer, check_token_grid, example_inputs
from ganime_jax.refiner import Refiner, load_refiner
from ganime_jax.tokenizer import Tokenizer, load_tokenizer
from ganime_jax.train.gpt_task import build_model
from ganime_jax.train.summary import image_grid

PARAMS_FIELD = "params"  # field of the stage-2 train state holding the transformer parameters
VIDEO_SUFFIX = ".mp4"
GIF_SUFFIX = ".gif"
PAIR_NAME = "generated"
GRID_NAME = "heldout_grid"
DEFAULT_FPS = 8.0  # frame rate of the videos when the config has no `sample.fps`
TRAIN_HINT = "train it with python main.py --config=CONFIG --workdir={} --mode=train"


@dataclasses.dataclass(frozen=True)
class Generator:
    """A frozen tokenizer and a trained transformer, ready for `generation.generate_frames`."""

    tokenizer: Tokenizer
    transformer: Transformer
    params: Any
    step: int
    refiner: Refiner | None = None


def _check_stage(config: ml_collections.ConfigDict) -> None:
    if config.get("stage") != "gpt":
        raise UserError(f"--mode=sample needs a stage-2 (gpt) config, got stage "
                        f"{config.get('stage')!r}; pass e.g. --config=configs/gpt_demo.py.")


def load_generator(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> Generator:
    """The tokenizer of `config.tokenizer.workdir` and the newest transformer in `workdir`."""
    _check_stage(config)
    if not config.tokenizer.workdir:
        raise UserError("config.tokenizer.workdir is not set; point it at the stage-1 (vqgan) "
                        "workdir the transformer was trained with.")
    tokenizer = load_tokenizer(config.tokenizer.workdir)
    vocab = config.model.gpt.vocab_size
    if vocab < tokenizer.num_embeddings:
        raise UserError(f"the GPT's vocab_size {vocab} is smaller than the tokenizer's "
                        f"{tokenizer.num_embeddings} codes ({config.tokenizer.workdir}); use the "
                        "tokenizer the transformer was trained with.")
    transformer = build_model(config.model)
    if transformer.frame_tokens != tokenizer.frame_tokens:
        raise UserError(
            f"the tokenizer in {config.tokenizer.workdir} makes frames of "
            f"{tokenizer.frame_tokens} tokens but config.model.frame_tokens is "
            f"{transformer.frame_tokens}; use the tokenizer the transformer was trained with.")
    check_token_grid(transformer, tokenizer.grid_shape,
                     f"the tokenizer in {config.tokenizer.workdir}")
    params, step = _restore_params(config, pathlib.Path(workdir), transformer)
    return Generator(tokenizer, transformer, params, step, _load_refiner(config, tokenizer))


def _load_refiner(config: ml_collections.ConfigDict, tokenizer: Tokenizer) -> Refiner | None:
    """The stage-3 refiner of `config.sample.refiner_workdir` ("" or absent: none)."""
    workdir = config.sample.get("refiner_workdir", "")
    if not workdir:
        return None
    refiner = load_refiner(workdir, config.sample.get("refiner_draw_weight", 0.0))
    data = refiner.config.data
    if (data.height, data.width) != tokenizer.frame_shape[:2]:
        raise UserError(f"the refiner in {workdir} was trained on {data.height}x{data.width} "
                        f"frames, the tokenizer makes {tokenizer.frame_shape[0]}x"
                        f"{tokenizer.frame_shape[1]}; use a refiner trained with this tokenizer.")
    kept = choice(config)
    generation.check_refiner_choice(refiner.uses_candidates, kept["candidates"],
                                    kept["selection"])
    return refiner


def _restore_params(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                    transformer: Transformer) -> tuple[Any, int]:
    with checkpointing.newest(workdir, "GPT", TRAIN_HINT.format(workdir)) as (manager, step):
        saved = checkpointing.saved_config(manager, step)
        if saved.get("stage") != "gpt":
            raise UserError(f"the checkpoint in {workdir} is of stage {saved.get('stage')!r}, "
                            "not a GPT; give the --workdir of a stage-2 (gpt) run.")
        directory = checkpointing.checkpoint_dir(workdir)
        checkpointing.check_same_architecture(saved, config.to_dict(), directory)
        abstract = _abstract_params(transformer)
        with checkpointing.reading(manager, step):
            stored = manager.item_metadata(step)[checkpointing.STATE_ITEM]
        _check_shapes(getattr(stored, "tree", stored), abstract, directory)
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        params = checkpointing.restore_params(manager, step, PARAMS_FIELD, abstract, device)
    return params, step


def _check_shapes(stored: Any, abstract: Any, directory: pathlib.Path) -> None:
    """One-line error naming the first parameter the checkpoint lacks or holds in another shape."""
    stored_shapes = {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in
                     jax.tree_util.tree_leaves_with_path(stored) if hasattr(leaf, "shape")}
    for path, leaf in jax.tree_util.tree_leaves_with_path({PARAMS_FIELD: abstract}):
        name = jax.tree_util.keystr(path)
        if stored_shapes.get(name) != tuple(leaf.shape):
            found = stored_shapes.get(name, "nothing")
            raise UserError(
                f"the GPT checkpoint in {directory} does not fit the model of the config: it "
                f"holds {found} for state{name} where the model has shape {tuple(leaf.shape)}; "
                "use the config it was trained with.")


def _abstract_params(transformer: Transformer) -> Any:
    """The transformer's parameters as ShapeDtypeStructs (without logical-axis boxes)."""
    abstract = jax.eval_shape(
        lambda *inputs: transformer.init(jax.random.key(0), *inputs)["params"],
        *example_inputs(transformer))
    return nn.unbox(abstract)


def output_paths(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                 output: str | None, default_name: str) -> tuple[pathlib.Path, pathlib.Path]:
    """(MP4 path, GIF path): `--output` names the MP4 (the GIF goes beside it); checked to be
    writable, not yet created."""
    if output:
        path = pathlib.Path(output)
        if path.is_dir():
            raise UserError(f"--output={output} is a folder; name the MP4 to write, e.g. "
                            f"{path / (default_name + VIDEO_SUFFIX)}.")
        if path.suffix.lower() not in (VIDEO_SUFFIX, GIF_SUFFIX, ""):
            raise UserError(f"--output={output} must end in {VIDEO_SUFFIX} (a GIF is written "
                            "beside it).")
        stem = path.with_suffix("")
    else:
        folder = config.sample.output_dir or pathlib.Path(workdir) / "samples"
        stem = pathlib.Path(folder) / default_name
    writable.check_folder(stem.parent, "the folder of --output" if output else
                          "the samples folder (config.sample.output_dir)")
    return stem.with_suffix(VIDEO_SUFFIX), stem.with_suffix(GIF_SUFFIX)


def heldout_clips(config: ml_collections.ConfigDict, num_frames: int, count: int,
                  lower_hint: str = "pass a smaller --num_frames") -> np.ndarray:
    """uint8 (<= count, num_frames, H, W, 3): the opening frames of the first held-out clips
    that are long enough; a one-line error ending in `lower_hint` when none is."""
    root, split = config.data.data_root, config.data.eval_split
    name = tfds_io.variant_name(config.data.dataset, "clips")
    counts = tfds_io.dataset_summary(root, name)["splits"][split]["n_frames_counts"]
    longest = max((int(n) for n in counts), default=0)
    if longest < num_frames:
        raise UserError(f"no held-out clip of {name}/{split} has {num_frames} frames (the longest "
                        f"has {longest}); {lower_hint}.")
    records = tfds_io.first_records(root, name, split, min_frames=num_frames, count=count)
    return np.stack([np.asarray(r["frames"])[:num_frames] for r in records])


def choice(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`config.sample`'s candidates, selection and direction (`generation.generate_frames`'
    keywords); a config saved before one of them existed gets its old behaviour
    (`bundle.CHOICE_FIELDS_SINCE`)."""
    return {name: config.sample.get(name, default)
            for name, default in bundle.CHOICE_FIELDS_SINCE.items()}


def sampling_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`config.sample`'s token sampling settings (`generation.generate_in_betweens` keywords)."""
    return {name: config.sample[name] for name in ("method", "temperature", "top_k", "top_p")}


def draw_weight_label(draw_weight: float) -> str:
    """How much of the kept draw a refiner mixes back (`refiner.Refiner.draw_weight`), for
    progress lines and tables; "" for none."""
    return f" keeping {draw_weight:g} of the draw" if draw_weight else ""


def choice_label(count: int, kept_by: str, drawn: str = "forward") -> str:
    """How a clip was drawn (`direction` `drawn`) and chosen among `count` candidates, for
    progress lines and tables."""
    label = ", halves from both ends" if drawn == "both" else ""
    if count == 1:
        return label
    return label + (f", medoid of {count}" if kept_by == "medoid"
                    else f", best of {count} by arrival")


def _grid_video(generated: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per time step, the generated clips in a row above the ground truth."""
    return np.stack([image_grid([generated[:, t], truth[:, t]])
                     for t in range(generated.shape[1])])


def run_sample(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
               first: str | None = None, last: str | None = None,
               num_frames: int | None = None, output: str | None = None) -> list[pathlib.Path]:
    """Generates and writes the clip (or the held-out grid); returns the paths written."""
    if (first is None) != (last is None):
        raise UserError("give both --first and --last (or neither, for held-out clips).")
    _check_stage(config)
    settings = config.sample
    num_frames = settings.num_frames if num_frames is None else num_frames
    video_path, gif_path = output_paths(config, workdir, output,
                                        PAIR_NAME if first is not None else GRID_NAME)
    generation.check_choice(method=settings.method, **choice(config))
    generator = load_generator(config, workdir)
    generation.check_num_frames(num_frames, generator.transformer.max_frames)
    frame_shape = generator.tokenizer.frame_shape
    if first is not None:
        first_frame, last_frame = load_frame_pair(first, last, frame_shape)
        firsts, lasts, truth = first_frame[None], last_frame[None], None
    else:
        truth = heldout_clips(config, num_frames, settings.num_clips)
        firsts, lasts = truth[:, 0], truth[:, -1]
    sampling = {**sampling_settings(config), **choice(config)}
    start = time.perf_counter()
    clips = generation.generate_frames(
        generator.tokenizer, generator.transformer, generator.params, firsts, lasts, num_frames,
        jax.random.key(settings.seed), decode_batch_size=generation.default_decode_batch_size(),
        refiner=generator.refiner, **sampling)
    best = choice_label(sampling["candidates"], sampling["selection"], sampling["direction"])
    if generator.refiner is not None:
        best += (f", refined by the step-{generator.refiner.step} refiner"
                 + draw_weight_label(generator.refiner.draw_weight))
    print(f"generated {len(clips)} clip(s) of {num_frames} frames with the step-{generator.step} "
          f"transformer ({settings.method}{best}) in {time.perf_counter() - start:.1f} s "
          "(compilation included).", flush=True)
    video = clips[0] if truth is None else _grid_video(clips, truth)
    fps = settings.get("fps", DEFAULT_FPS)
    video_path.parent.mkdir(parents=True, exist_ok=True)
    video_io.write_video(video_path, video, fps=fps)
    video_io.write_gif(gif_path, video, fps=fps)
    for path in (video_path, gif_path):
        print(f"wrote {path}")
    return [video_path, gif_path]
