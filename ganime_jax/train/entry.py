"""`python main.py --mode=train`: build the embedded dataset if asked, then train the stage."""
import json
import pathlib

import jax
import ml_collections

from ganime_jax import mesh as mesh_lib, multihost
from ganime_jax.data import tfds_io
from ganime_jax.errors import UserError
from ganime_jax.train import loop


def _embedded_settings(data: ml_collections.ConfigDict) -> dict | None:
    """The builder settings of the embedded dataset `data` names, or None if it names none."""
    if "embedded" not in data or not data.embedded.kind:
        return None
    settings = {k: v for k, v in data.embedded.items() if k != "kind"}
    return {**settings, "height": data.height, "width": data.width}


def ensure_dataset(data: ml_collections.ConfigDict) -> None:
    """Builds the embedded dataset named by `data.embedded.kind` when it is not there yet."""
    settings = _embedded_settings(data)
    if settings is None:
        return
    from ganime_jax.data import embedded
    embedded.ensure_embedded_dataset(data.data_root, data.dataset, kind=data.embedded.kind,
                                     **settings)


def ensure_tokens(config: ml_collections.ConfigDict) -> None:
    """Stage 2 trains on `{dataset}_tokens`: encodes the clips with the tokenizer if missing."""
    from ganime_jax.train import token_dataset
    data = config.data
    token_dataset.ensure_token_dataset(data.data_root, data.dataset, config.tokenizer.workdir,
                                       batch_size=data.encode_batch_size,
                                       clips_per_shard=data.encode_clips_per_shard)


def prepare_data(config: ml_collections.ConfigDict) -> None:
    """Builds what the stage reads and is missing (process 0 only)."""
    ensure_dataset(config.data)
    if config.stage == "gpt":
        ensure_tokens(config)


def _stage_splits(config: ml_collections.ConfigDict) -> tuple[str, list[str]] | None:
    """(what, its splits) for the dataset the stage reads: as built, or as `prepare_data` will
    build it (stage 2's tokens take every split of the clips); None when not known yet."""
    data = config.data
    kinds = {"gpt": ("tokens", "clips"), "refiner": ("clips",)}.get(config.stage, ("frames",))
    if config.stage == "refiner" and config.model.get("candidate_statistics"):
        kinds = ("candidates",)
    for kind in kinds:
        name = tfds_io.variant_name(data.dataset, kind)
        if tfds_io.dataset_exists(data.data_root, name):
            return str(tfds_io.dataset_path(data.data_root, name)), tfds_io.split_names(
                data.data_root, name)
    settings = _embedded_settings(data)
    if settings is None:
        return None
    from ganime_jax.data import embedded
    return (f"the embedded {data.embedded.kind} dataset of config.data.embedded",
            embedded.planned_splits(data.embedded.kind, **settings))


def check_eval_split(config: ml_collections.ConfigDict) -> None:
    """The held-out figures' split (`eval.split`) must be one the stage's dataset has, checked
    before anything is built."""
    known = _stage_splits(config)
    if known is not None and config.eval.split not in known[1]:
        what, splits = known
        raise UserError(
            f"config.eval.split={config.eval.split!r}, but {what} has only the splits {splits}: "
            "pick one of them (--config.eval.split=...), or give the embedded dataset a "
            "validation split (num_validation_episodes or num_validation_clips > 0 in the "
            "stage-1 config's data.embedded; an existing dataset must be deleted to be rebuilt).")


def check_config(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
    """The stage's one-line config errors, raised before `prepare_data` builds anything."""
    if config.stage == "vqgan":
        from ganime_jax.train.vqgan_task import check_config as check_stage
    elif config.stage == "gpt":
        from ganime_jax.train.gpt_task import check_config as check_stage
    elif config.stage == "refiner":
        from ganime_jax.train.refiner_task import check_config as check_stage
    else:
        raise ValueError(f"unknown stage {config.stage!r}")
    check_stage(config, mesh)


def make_task(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
              workdir: str | pathlib.Path) -> loop.Task:
    if config.stage == "vqgan":
        from ganime_jax.train.vqgan_task import VQGANTask
        return VQGANTask(config, mesh)
    if config.stage == "gpt":
        from ganime_jax.train.gpt_task import GPTTask, check_tokens
        check_tokens(config)
        return GPTTask(config, mesh, workdir)
    if config.stage == "refiner":
        from ganime_jax.train.refiner_task import RefinerTask
        return RefinerTask(config, mesh)
    raise ValueError(f"unknown stage {config.stage!r}")


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> loop.LoopResult:
    """Trains (or resumes) the config's stage in `workdir`, then reports held-out figures."""
    mesh = mesh_lib.make_mesh(config.mesh)
    check_config(config, mesh)
    check_eval_split(config)
    if multihost.is_main_process():
        prepare_data(config)
    multihost.barrier("prepare_data")  # the others read what process 0 built
    task = make_task(config, mesh, workdir)
    result = loop.run(config, workdir, task)
    final = task.evaluate(result.state)
    if multihost.is_main_process():
        summary = {"step": result.step, "eval": final, "train": result.last_metrics}
        path = pathlib.Path(workdir) / "final_metrics.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(path)
        print(f"trained {config.stage} to step {result.step}; held-out: "
              + ", ".join(f"{k} {v:.4g}" for k, v in final.items()) + f"; workdir {workdir}")
    return result
