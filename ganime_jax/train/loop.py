"""The training loop both stages share: init or resume, step, log, evaluate, checkpoint.

A stage plugs in through a `Task`; the loop owns everything else, so checkpointing, resume,
progress and logging behave the same for the VQ-GAN and the GPT trainer.
"""
import dataclasses
import pathlib
import time
from typing import Any, Iterator, Protocol

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from ganime_jax import checkpointing, multihost
from ganime_jax.train.summary import METRICS_FILENAME, MetricWriter, read_metrics


class Task(Protocol):
    """What a training stage provides to `run`."""

    def abstract_state(self) -> Any:
        """The train state as ShapeDtypeStructs carrying their shardings."""

    def init_state(self, rng: jax.Array) -> Any:
        """A fresh train state, born with its shardings."""

    def train_batches(self, data_state: bytes | None) -> Iterator[tuple[dict, bytes]]:
        """Global batches on the mesh, each with the iterator state after it was taken."""

    def train_step(self, state: Any, batch: dict, rng: jax.Array, step: int) -> tuple[Any, dict]:
        """One optimisation step (jit-compiled inside). `rng` is the run's base key, the same
        every step: the step folds in its state's step count. `step` is the host-side count
        (it picks the compiled variant of a training phase)."""

    def periodic(self, state: Any, step: int, writer: MetricWriter, last_batch: dict,
                 clock: "TrainingClock") -> None:
        """Evaluation and image summaries; called after every step, decides itself when to act.
        Held-out figures carry `clock.read()`, the training time they were reached at."""

    def evaluate(self, state: Any) -> dict[str, float]:
        """Held-out figures of the current state."""


@dataclasses.dataclass
class LoopResult:
    state: Any
    step: int
    last_metrics: dict


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
        task: Task) -> LoopResult:
    """Trains until `config.train.num_steps`, resuming from the newest checkpoint in workdir."""
    workdir = pathlib.Path(workdir)
    checkpointing.write_config(workdir, config)
    manager = checkpointing.make_manager(
        workdir, every=config.train.checkpoint_every, keep=config.train.keep_checkpoints)
    restored = checkpointing.restore_latest(manager, task.abstract_state(), config)
    if restored is None:
        state, data_state, step = task.init_state(jax.random.key(config.seed)), None, 0
    else:
        state, data_state, step = restored
        if multihost.is_main_process():
            print(f"resumed from the checkpoint of step {step} in {workdir}", flush=True)
    clock = TrainingClock(workdir, step)
    base_rng = jax.random.fold_in(jax.random.key(config.seed), 1)
    writer = MetricWriter(workdir)
    batches = task.train_batches(data_state)
    last_metrics: dict = {}
    progress = tqdm(total=config.train.num_steps, initial=step, unit="step",
                    desc=f"train {config.stage}", disable=not multihost.is_main_process(),
                    dynamic_ncols=True)
    tick, tick_step = time.perf_counter(), step
    try:
        while step < config.train.num_steps:
            batch, data_state = next(batches)
            state, metrics = task.train_step(state, batch, base_rng, step)
            step += 1
            progress.update(1)
            if step % config.train.log_every == 0 or step == config.train.num_steps:
                last_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                last_metrics["steps_per_sec"] = (step - tick_step) / max(now - tick, 1e-9)
                tick, tick_step = now, step
                last_metrics.update(clock.read())
                writer.scalars(step, last_metrics)
                progress.set_postfix(_short(last_metrics), refresh=False)
            task.periodic(state, step, writer, batch, clock)
            checkpointing.save(manager, step, state, data_state, config)
        if manager.latest_step() != step:
            checkpointing.save(manager, step, state, data_state, config, force=True)
    finally:
        progress.close()
        manager.wait_until_finished()
        manager.close()
        writer.close()
    return LoopResult(state=state, step=step, last_metrics=last_metrics)


class TrainingClock:
    """Seconds this run has trained, summed over every sitting that led to the current step:
    `wall_seconds` (elapsed) and `cpu_seconds` (the process's CPU time, all threads), so that a
    learning curve can be drawn against either. A resumed run picks up the figures of the last
    record at or before its step in `metrics.jsonl`."""

    def __init__(self, workdir: pathlib.Path, step: int):
        self._wall_offset = self._cpu_offset = 0.0
        if step and (workdir / METRICS_FILENAME).exists():
            earlier = [r for s, r in read_metrics(workdir).items() if s <= step
                       and "wall_seconds" in r]
            if earlier:
                last = max(earlier, key=lambda r: r["step"])
                self._wall_offset, self._cpu_offset = last["wall_seconds"], last["cpu_seconds"]
        self._wall_start, self._cpu_start = time.perf_counter(), time.process_time()

    def read(self) -> dict[str, float]:
        return {"wall_seconds": self._wall_offset + time.perf_counter() - self._wall_start,
                "cpu_seconds": self._cpu_offset + time.process_time() - self._cpu_start}


def _short(metrics: dict) -> dict:
    """The few numbers worth a place in the progress bar."""
    keep = ("loss", "rec_loss", "l1", "lpips", "d_loss", "accuracy", "steps_per_sec")
    return {k: f"{metrics[k]:.4g}" for k in keep if k in metrics and np.isfinite(metrics[k])}
