"""`python main.py --mode=train`: build the embedded dataset if asked, then train the stage."""
import json
import pathlib

import jax
import ml_collections

from ganime_jax.train import loop, mesh as mesh_lib


def ensure_dataset(data: ml_collections.ConfigDict) -> None:
    """Builds the embedded dataset named by `data.embedded.kind` when it is not there yet."""
    if not data.embedded.kind:
        return
    from data_prep import embedded
    settings = {k: v for k, v in data.embedded.items() if k != "kind"}
    embedded.ensure_embedded_dataset(data.data_root, data.dataset, kind=data.embedded.kind,
                                     height=data.height, width=data.width, **settings)


def make_task(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> loop.Task:
    if config.stage == "vqgan":
        from ganime_jax.train.vqgan_task import VQGANTask
        return VQGANTask(config, mesh)
    raise ValueError(f"unknown stage {config.stage!r}")


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> loop.LoopResult:
    """Trains (or resumes) the config's stage in `workdir`, then reports held-out figures."""
    if jax.process_index() == 0:
        ensure_dataset(config.data)
    mesh = mesh_lib.make_mesh(config.mesh)
    task = make_task(config, mesh)
    result = loop.run(config, workdir, task)
    final = task.evaluate(result.state)
    if jax.process_index() == 0:
        summary = {"step": result.step, "eval": final, "train": result.last_metrics}
        path = pathlib.Path(workdir) / "final_metrics.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(path)
        print(f"trained to step {result.step}; held-out: "
              + ", ".join(f"{k} {v:.4g}" for k, v in final.items()) + f"; workdir {workdir}")
    return result
