"""Inference bundles: a frozen tokenizer, a transformer and two example frames in one folder.

`python -m ganime_jax.export` writes a bundle; `python main.py --mode=sample` with neither
--config nor --workdir samples from one (the demo shipped in `DEMO_BUNDLE` unless --bundle
names another). Layout of a bundle folder:

    vqgan/                 stage-1 workdir: checkpoints/<step>/ (state = {"gen_params"}, config)
    gpt/                   stage-2 workdir: checkpoints/<step>/ (state = {"params"}, config)
                           and config.json, the GPT config that sampling uses
    refiner/               optional stage-3 workdir (state = {"params"}, config): refines the
                           decoded in-betweens; the GPT config's sample.refiner_workdir names it
    first.png, last.png    the first and last frame of a held-out clip
    bundle.json            provenance: source workdirs and steps, tokenizer fingerprint, command

Both workdirs read with the ordinary loaders (`load_tokenizer`, `sample.load_generator`).
Path rule: a relative `tokenizer.workdir` in the bundled GPT config is relative to the bundle
folder (the export writes `"vqgan"`), as is `sample.refiner_workdir` (`"refiner"`), so a bundle
works from any current directory and after being moved; `load_sample_run` resolves them.
"""
import dataclasses
import pathlib

import ml_collections

from ganime_jax import checkpointing, config_check
from ganime_jax.data import tfds_io
from ganime_jax.errors import UserError
from ganime_jax.train import entry

DEMO_BUNDLE = pathlib.Path(__file__).resolve().parent / "assets" / "demo"
VQGAN_DIR = "vqgan"
GPT_DIR = "gpt"
REFINER_DIR = "refiner"
FIRST_FRAME = "first.png"
LAST_FRAME = "last.png"
MANIFEST = "bundle.json"
# How to mend a bundle whose config cannot be read.
_EXPORT_AGAIN = "; export the bundle again."
# Samples of a bundle go to <OUTPUT_ROOT>/<bundle folder name>_sample (its evaluations to
# ..._eval), relative to the current directory (like the default workdirs), never inside the
# bundle or the package.
OUTPUT_ROOT = "workdirs"
# Where a bundle's `--mode=eval` reads (and, for an embedded dataset, builds) its test clips:
# relative to the current directory, like the configs' default, never the source run's path.
DATA_ROOT = "datasets"
# The config sections (and single fields) that `--mode=eval` on a bundle may override:
# data.eval_split="validation" scores the validation clips, for choosing sampling settings.
EVAL_OVERRIDE_SECTIONS = ("evaluate", "sample", "data.eval_split")
# `sample` fields added after bundles were first exported, with the values that reproduce how
# an older bundle sampled: filled in on load so that --config.sample.<field> can set them.
# The choice fields are `generation.generate_frames` keywords (`sample.choice`).
CHOICE_FIELDS_SINCE = {"candidates": 1, "selection": "arrival", "direction": "forward"}
SAMPLE_FIELDS_SINCE = {**CHOICE_FIELDS_SINCE, "refiner_workdir": "", "refiner_draw_weight": 0.0}
EXPORT_COMMAND = ("python -m ganime_jax.export --vqgan_workdir=workdirs/vqgan_demo "
                  "--gpt_workdir=workdirs/gpt_demo --out={}")


@dataclasses.dataclass(frozen=True)
class SampleRun:
    """What `--mode=sample` needs from a bundle: config, GPT workdir and the example frames."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    first: pathlib.Path
    last: pathlib.Path


def output_dir(bundle_dir: str | pathlib.Path, kind: str = "sample") -> pathlib.Path:
    return pathlib.Path(OUTPUT_ROOT) / f"{pathlib.Path(bundle_dir).resolve().name}_{kind}"


def add_missing_sample_fields(config: ml_collections.ConfigDict) -> None:
    """Gives a config saved before the `SAMPLE_FIELDS_SINCE` existed their old behaviour's
    values, in place, so that overrides can set them."""
    for name, value in SAMPLE_FIELDS_SINCE.items():
        if name not in config.sample:
            config.sample[name] = value


def load_sample_run(bundle_dir: str | pathlib.Path = DEMO_BUNDLE) -> SampleRun:
    """The bundled GPT config (tokenizer path resolved, samples sent to `output_dir`), its
    workdir and example frames; a one-line error when `bundle_dir` holds no bundle."""
    bundle_dir = pathlib.Path(bundle_dir)
    config_path = bundle_dir / GPT_DIR / checkpointing.CONFIG_FILENAME
    if not config_path.is_file():
        raise UserError(
            f"no inference bundle in {bundle_dir} (missing {GPT_DIR}/"
            f"{checkpointing.CONFIG_FILENAME}); export one with "
            f"`{EXPORT_COMMAND.format(bundle_dir)}`, or pass the --config and --workdir of a "
            "trained stage-2 run.")
    config = checkpointing.read_config_file(config_path, "the bundle config", _EXPORT_AGAIN)
    if config.get("stage") != "gpt" or not config.get("tokenizer", {}).get("workdir"):
        raise UserError(f"{config_path} is not a stage-2 (gpt) config with a tokenizer.workdir; "
                        "export the bundle again.")
    tokenizer_workdir = pathlib.Path(config.tokenizer.workdir)
    if not tokenizer_workdir.is_absolute():
        config.tokenizer.workdir = str(bundle_dir.absolute() / tokenizer_workdir)
    config.sample.output_dir = str(output_dir(bundle_dir))
    add_missing_sample_fields(config)
    refiner_workdir = pathlib.Path(config.sample.refiner_workdir)
    if config.sample.refiner_workdir and not refiner_workdir.is_absolute():
        config.sample.refiner_workdir = str(bundle_dir.absolute() / refiner_workdir)
    return SampleRun(config=config, workdir=bundle_dir / GPT_DIR,
                     first=bundle_dir / FIRST_FRAME, last=bundle_dir / LAST_FRAME)


def tokenizer_config(tokenizer_dir: pathlib.Path) -> ml_collections.ConfigDict:
    """The bundled tokenizer's config: its config.json, as for the GPT (a bundle's configs are
    the files beside its checkpoints, which may have been amended since the export: the demo's
    test split grew to 12 episodes so), else the config saved with the checkpoint."""
    path = tokenizer_dir / checkpointing.CONFIG_FILENAME
    if not path.is_file():
        return checkpointing.read_config(tokenizer_dir)
    return checkpointing.read_config_file(path, "the bundle's tokenizer config", _EXPORT_AGAIN)


def load_eval_run(bundle_dir: str | pathlib.Path, overrides: list[str]) -> SampleRun:
    """`load_sample_run` for `--mode=eval`: `overrides` (`EVAL_OVERRIDE_SECTIONS`) are applied,
    the report goes to `output_dir(bundle_dir, "eval")` (`"eval_<split>"` for a split other than
    the bundle's own), and the embedded dataset the bundle's tokenizer was trained on is built
    under the config's data_root if its clips are missing (as training would build it)."""
    run = load_sample_run(bundle_dir)
    config = run.config
    own_split = config.data.eval_split
    config.evaluate.output_dir = ""
    config_check.apply_overrides(config, overrides, EVAL_OVERRIDE_SECTIONS)
    split = config.data.eval_split
    if not config.evaluate.output_dir:
        kind = "eval" if split == own_split else f"eval_{split}"
        config.evaluate.output_dir = str(output_dir(bundle_dir, kind))
    clips = tfds_io.variant_name(config.data.dataset, "clips")
    if not tfds_io.dataset_exists(config.data.data_root, clips):
        data = tokenizer_config(pathlib.Path(config.tokenizer.workdir)).data
        if data.dataset != config.data.dataset or not data.get("embedded", {}).get("kind"):
            raise UserError(f"no {config.data.dataset}_clips dataset in {config.data.data_root} "
                            "and the bundle's tokenizer was not trained on an embedded dataset "
                            "to build it from; build it with `python -m data_prep.episodes`.")
        data.data_root = config.data.data_root
        entry.ensure_dataset(data)
    splits = tfds_io.split_names(config.data.data_root, clips)
    if split not in splits:
        raise UserError(
            f"{tfds_io.dataset_path(config.data.data_root, clips)} has no {split!r} split (it has "
            f"{splits}): an embedded dataset has a validation split when built with "
            "num_validation_episodes or num_validation_clips > 0 (the bundle's "
            f"{VQGAN_DIR}/config.json says how it is built); delete it and its _frames twin to "
            "have it rebuilt.")
    return run
