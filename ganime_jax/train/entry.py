"""`python main.py --mode=train`: build the embedded dataset if asked, then train the stage."""
import json
import pathlib

import jax
import ml_collections

from ganime_jax import mesh as mesh_lib, multihost
from ganime_jax.train import loop


def ensure_dataset(data: ml_collections.ConfigDict) -> None:
    """Builds the embedded dataset named by `data.embedded.kind` when it is not there yet."""
    if "embedded" not in data or not data.embedded.kind:
        return
    from ganime_jax.data import embedded
    settings = {k: v for k, v in data.embedded.items() if k != "kind"}
    embedded.ensure_embedded_dataset(data.data_root, data.dataset, kind=data.embedded.kind,
                                     height=data.height, width=data.width, **settings)


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


def check_config(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
    """The stage's one-line config errors, raised before `prepare_data` builds anything."""
    if config.stage == "vqgan":
        from ganime_jax.train.vqgan_task import check_config as check_stage
    elif config.stage == "gpt":
        from ganime_jax.train.gpt_task import check_config as check_stage
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
    raise ValueError(f"unknown stage {config.stage!r}")


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> loop.LoopResult:
    """Trains (or resumes) the config's stage in `workdir`, then reports held-out figures."""
    mesh = mesh_lib.make_mesh(config.mesh)
    check_config(config, mesh)
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
