"""Export an inference-only bundle (see `ganime_jax.bundle`) from a trained VQ-GAN and GPT run.

    python -m ganime_jax.export --gpt_workdir=workdirs/gpt_demo \
        --vqgan_workdir=workdirs/vqgan_demo --out=ganime_jax/assets/demo

Only what sampling reads is kept: the VQ-GAN generator parameters and the GPT parameters of
each run's newest checkpoint, with their configs; no discriminator, no optimiser state, no data
iterator. The example frames are the first and last of `config.sample.num_frames` frames of a
held-out clip of the GPT config's clips dataset. `--sample=field=value` (repeatable) sets how
the bundle samples (its `config.sample`, e.g. `--sample=candidates=4`). When the GPT's token
dataset is at hand, the tokenizer must be the one that encoded it. The bundle is built in a
temporary folder beside `--out`, read back through the sampling loaders, then renamed into
place.
"""
import datetime
import json
import pathlib
import shlex
import sys
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags, logging
from PIL import Image

from ganime_jax import bundle, checkpointing, config_check, generation, sample, writable
from ganime_jax import refiner as refiner_lib
from ganime_jax.commands import run_command
from ganime_jax.data import tfds_io
from ganime_jax.errors import UserError
from ganime_jax.tokenizer import GEN_PARAMS, load_tokenizer

MANIFEST_FORMAT = 1
COMPUTE_DTYPES = ("", "float32", "bfloat16")  # "": the training run's


def _example_clip(config: ml_collections.ConfigDict, index: int) -> np.ndarray:
    """The `index`-th held-out clip of at least `config.sample.num_frames` frames, cut to them."""
    if index < 0:
        raise UserError(f"--example_clip={index} must be >= 0.")
    clips = sample.heldout_clips(config, config.sample.num_frames, index + 1)
    if len(clips) <= index:
        raise UserError(f"the {config.data.eval_split} split of {config.data.dataset} has only "
                        f"{len(clips)} clips of >= {config.sample.num_frames} frames; pass "
                        f"--example_clip < {len(clips)}.")
    return clips[index]


def _check_same_heldout(config: ml_collections.ConfigDict, heldout_dataset: str) -> None:
    """`heldout_dataset`'s eval split must hold the clips of the run's own, where the run's is
    at hand (same count, same first and last clip): a larger copy of a dataset may stand in
    for it, another dataset may not."""
    root, split = config.data.data_root, config.data.eval_split
    names = [tfds_io.variant_name(name, "clips")
             for name in (config.data.dataset, heldout_dataset)]
    if not tfds_io.dataset_exists(root, names[1]):
        raise UserError(f"--heldout_dataset={heldout_dataset}: no {names[1]} in {root}; build it "
                        "first (an embedded dataset: `python -m data_prep.embedded`).")
    if not tfds_io.dataset_exists(root, names[0]):
        return
    own, other = (tfds_io.open_split(root, name, split) for name in names)
    same = len(own) == len(other) and len(own) > 0 and all(
        np.array_equal(own[i]["frames"], other[i]["frames"]) for i in (0, len(own) - 1))
    if not same:
        raise UserError(f"--heldout_dataset={heldout_dataset}: its {split} split is not the one "
                        f"of the run's {config.data.dataset} ({len(other)} against {len(own)} "
                        "clips, or other frames); give a dataset with the same held-out clips.")


def _check_trained_tokenizer(config: ml_collections.ConfigDict, fingerprint: str,
                             vqgan_workdir: pathlib.Path) -> None:
    """When the GPT's token dataset is at hand, its tokenizer must be the one exported."""
    data_root, name = config.data.data_root, tfds_io.variant_name(config.data.dataset, "tokens")
    if not tfds_io.dataset_exists(data_root, name):
        return
    stored = tfds_io.read_metadata(data_root, name).get("tokenizer", {})
    if stored.get("fingerprint") != fingerprint:
        raise UserError(
            f"the GPT trained on {tfds_io.dataset_path(data_root, name)}, encoded by checkpoint "
            f"step {stored.get('step')} of {stored.get('workdir')}, not by the tokenizer in "
            f"{vqgan_workdir}; pass --vqgan_workdir of the tokenizer the GPT was trained with.")


def _check_refiner_tokenizer(refiner: refiner_lib.Refiner, fingerprint: str) -> None:
    """A refiner learned on one tokenizer's decodes: its run's tokenizer must be the bundle's
    (checked by fingerprint when that workdir is still there)."""
    workdir = pathlib.Path(refiner.config.tokenizer.workdir)
    if workdir.is_dir() and load_tokenizer(workdir).fingerprint() != fingerprint:
        raise UserError(f"the refiner in {refiner.workdir} was trained through the tokenizer in "
                        f"{workdir}, whose parameters differ from the bundle's; train the "
                        "refiner with this tokenizer (config.tokenizer.workdir).")


def _count(params: Any) -> int:
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))


def _same_params(a: Any, b: Any) -> bool:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    return (jax.tree.structure(a) == jax.tree.structure(b)
            and all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b)))


def folder_size(path: pathlib.Path) -> int:
    """Bytes of the files under `path`."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _check_out(out: pathlib.Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it or choose "
                        "another --out.")
    is_bundle = out.is_dir() and ((out / bundle.MANIFEST).is_file() or not any(out.iterdir()))
    if not is_bundle:
        raise UserError(f"{out} is not a bundle folder (no {bundle.MANIFEST}); --overwrite only "
                        "replaces a bundle: remove it yourself or choose another --out.")


def _build(staging: pathlib.Path, config: ml_collections.ConfigDict, gpt_workdir: pathlib.Path,
           vqgan_workdir: pathlib.Path, example_clip: int, sample_settings: Sequence[str],
           compute_dtype: str, heldout_dataset: str, refiner_workdir: str,
           command: str) -> None:
    bundled = ml_collections.ConfigDict(config.to_dict())
    if heldout_dataset:
        _check_same_heldout(config, heldout_dataset)
        bundled.data.dataset = heldout_dataset
    clip = _example_clip(bundled, example_clip)
    source_config = ml_collections.ConfigDict(config.to_dict())
    source_config.tokenizer.workdir = str(vqgan_workdir)
    bundle.add_missing_sample_fields(source_config)
    source_config.sample.refiner_workdir = refiner_workdir
    generator = sample.load_generator(source_config, gpt_workdir)
    tokenizer = generator.tokenizer
    fingerprint = tokenizer.fingerprint()
    _check_trained_tokenizer(config, fingerprint, vqgan_workdir)
    if generator.refiner is not None:
        _check_refiner_tokenizer(generator.refiner, fingerprint)

    bundled.tokenizer.workdir = bundle.VQGAN_DIR  # relative to the bundle folder
    bundled.data.data_root = bundle.DATA_ROOT
    bundle.add_missing_sample_fields(bundled)  # a run saved before them
    bundled.sample.refiner_workdir = bundle.REFINER_DIR if refiner_workdir else ""
    config_check.apply_overrides(bundled, [f"--config.sample.{s}" for s in sample_settings],
                                 ("sample",))
    generation.check_choice(method=bundled.sample.method, **sample.choice(bundled))
    if compute_dtype:
        bundled.model.gpt.dtype = compute_dtype
    # The config beside the tokenizer's checkpoint: a bundle's may have been amended since.
    checkpointing.write_params_checkpoint(staging / bundle.VQGAN_DIR, tokenizer.step,
                                          {GEN_PARAMS: tokenizer.params},
                                          bundle.tokenizer_config(vqgan_workdir))
    checkpointing.write_params_checkpoint(staging / bundle.GPT_DIR, generator.step,
                                          {sample.PARAMS_FIELD: generator.params}, bundled)
    if generator.refiner is not None:
        checkpointing.write_params_checkpoint(
            staging / bundle.REFINER_DIR, generator.refiner.step,
            {refiner_lib.PARAMS_FIELD: generator.refiner.params}, generator.refiner.config)
    Image.fromarray(clip[0]).save(staging / bundle.FIRST_FRAME)
    Image.fromarray(clip[-1]).save(staging / bundle.LAST_FRAME)

    run = bundle.load_sample_run(staging)
    reloaded = sample.load_generator(run.config, run.workdir)
    if (reloaded.tokenizer.fingerprint() != fingerprint
            or not _same_params(reloaded.params, generator.params)
            or (reloaded.refiner is None) != (generator.refiner is None)
            or (generator.refiner is not None
                and not _same_params(reloaded.refiner.params, generator.refiner.params))):
        raise RuntimeError(f"the bundle in {staging} does not read back as written")
    manifest = {
        "format": MANIFEST_FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "vqgan": {"source_workdir": str(vqgan_workdir.absolute()), "step": tokenizer.step,
                  "parameters": _count(tokenizer.params)},
        "gpt": {"source_workdir": str(gpt_workdir.absolute()), "step": generator.step,
                "parameters": _count(generator.params)},
        "tokenizer_fingerprint": fingerprint,
        "refiner": None if generator.refiner is None else {
            "source_workdir": str(pathlib.Path(refiner_workdir).absolute()),
            "step": generator.refiner.step, "parameters": _count(generator.refiner.params)},
        "example": {"dataset": bundled.data.dataset, "split": config.data.eval_split,
                    "clip": example_clip, "num_frames": config.sample.num_frames},
    }
    (staging / bundle.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def export_bundle(gpt_workdir: str | pathlib.Path, out: str | pathlib.Path, *,
                  vqgan_workdir: str | pathlib.Path | None = None, example_clip: int = 0,
                  sample_settings: Sequence[str] = (), compute_dtype: str = "",
                  heldout_dataset: str = "", refiner_workdir: str | None = None,
                  overwrite: bool = False, command: str = "") -> pathlib.Path:
    """Writes the bundle of `gpt_workdir`'s newest GPT and its tokenizer (by default the
    run's `tokenizer.workdir`) to `out`; returns `out`. `sample_settings` ("field=value" of
    `config.sample`) change how the bundle samples, e.g. "candidates=4"; `compute_dtype`
    ("": the run's) is the GPT's activation dtype when sampling (a GPT trained in bfloat16 on
    an accelerator samples faster in float32 on CPUs without bfloat16 dots);
    `heldout_dataset` ("": the run's `data.dataset`) names the clips dataset whose held-out
    split the bundle's eval and example frames read, for a run that trained on a larger copy
    of it (the same held-out clips, checked); `refiner_workdir` (None: the run's
    `sample.refiner_workdir`, "": none) is a stage-3 run trained through the same tokenizer
    (checked), bundled as `refiner/`; `command` is recorded as provenance."""
    if compute_dtype not in COMPUTE_DTYPES:
        raise UserError(f"compute dtype {compute_dtype!r}: choose one of {COMPUTE_DTYPES[1:]} "
                        "or leave it empty for the training run's.")
    out, gpt_workdir = pathlib.Path(out), pathlib.Path(gpt_workdir)
    _check_out(out, overwrite)
    writable.check_folder(out.parent, "the folder of --out")
    config = checkpointing.read_config(gpt_workdir)
    if config.get("stage") != "gpt":
        raise UserError(f"the checkpoint in {gpt_workdir} is of stage {config.get('stage')!r}, "
                        "not a GPT; give --gpt_workdir of a stage-2 (gpt) run.")
    if vqgan_workdir is None:
        vqgan_workdir = config.tokenizer.workdir
    if refiner_workdir is None:
        refiner_workdir = config.get("sample", {}).get("refiner_workdir", "")
    with writable.staged_folder(out) as staging:
        _build(staging, config, gpt_workdir, pathlib.Path(vqgan_workdir), example_clip,
               sample_settings, compute_dtype, heldout_dataset, refiner_workdir, command)
    return out


FLAGS = flags.FLAGS


def define_flags() -> None:
    """The CLI flags, defined only when run as a script."""
    flags.DEFINE_string("gpt_workdir", None, "Stage-2 (GPT) workdir to export.")
    flags.DEFINE_string("vqgan_workdir", None, "Stage-1 (VQ-GAN) workdir of its tokenizer "
                        "(default: the GPT run's tokenizer.workdir).")
    flags.DEFINE_string("out", None, "Bundle folder to write.")
    flags.DEFINE_integer("example_clip", 0, "Which held-out clip (among those of >= "
                         "config.sample.num_frames frames) gives first.png and last.png.")
    flags.DEFINE_multi_string("sample", [], "field=value of the bundled config.sample (how "
                              "the bundle samples), e.g. --sample=candidates=4; repeatable.")
    flags.DEFINE_string("compute_dtype", "", "The GPT's activation dtype when the bundle "
                        "samples: float32 or bfloat16 (default: the training run's).")
    flags.DEFINE_string("heldout_dataset", "", "The clips dataset whose held-out split the "
                        "bundle's eval and example frames read (default: the GPT run's "
                        "data.dataset), for a run trained on a larger copy of it.")
    flags.DEFINE_string("refiner_workdir", None, "Stage-3 (refiner) workdir to bundle, trained "
                        "through the same tokenizer (default: the GPT run's "
                        "sample.refiner_workdir; empty: none).")
    flags.DEFINE_bool("overwrite", False, "Replace an existing bundle at --out.")


def main(argv: Sequence[str]) -> None:
    if not FLAGS["verbosity"].present:  # orbax's INFO logs
        logging.set_verbosity(logging.WARNING)
    del argv
    if not FLAGS.gpt_workdir or not FLAGS.out:
        raise UserError("--gpt_workdir and --out are required.")
    command = shlex.join(["python", "-m", "ganime_jax.export", *sys.argv[1:]])
    out = export_bundle(FLAGS.gpt_workdir, FLAGS.out, vqgan_workdir=FLAGS.vqgan_workdir,
                        example_clip=FLAGS.example_clip, sample_settings=FLAGS.sample,
                        compute_dtype=FLAGS.compute_dtype,
                        heldout_dataset=FLAGS.heldout_dataset,
                        refiner_workdir=FLAGS.refiner_workdir, overwrite=FLAGS.overwrite,
                        command=command)
    print(f"wrote {out} ({folder_size(out) / 2**20:.1f} MiB)")


if __name__ == "__main__":
    define_flags()
    run_command(main)
