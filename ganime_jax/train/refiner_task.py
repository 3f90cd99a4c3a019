"""Stage 3 as a `loop.Task`: clips, the frozen tokenizer, a replicated refiner, evaluation.

The refiner is small (a few hundred thousand parameters), so its state is replicated and only
the batch is split over the mesh. Held-out figures: L1 and LPIPS of every in-between of the
first `eval.num_batches * eval.batch_size` clips of `eval.split`, refined and plainly decoded.
A refiner with `candidate_statistics` reads `{dataset}_candidates` (`ganime_jax.candidate_dataset`)
instead of `{dataset}_clips`; its "plainly decoded" figures are then the kept candidate's.
"""
import functools
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np

from ganime_jax import checkpointing, mesh as mesh_lib
from ganime_jax.data import pipeline, tfds_io
from ganime_jax.errors import UserError
from ganime_jax.losses.perceptual import load_lpips_params
from ganime_jax.models.refiner import FrameRefiner, check_blend_init, check_frame_size
from ganime_jax.tokenizer import load_tokenizer
from ganime_jax.train import optimizers, refiner_step
from ganime_jax.train.loop import TrainingClock
from ganime_jax.train.summary import MetricWriter


def check_config(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
    """One-line errors for settings that cannot train."""
    mesh_lib.check_batch_size(config.train.batch_size, mesh)
    mesh_lib.check_batch_size(config.eval.batch_size, mesh, "config.eval.batch_size")
    if config.data.min_frames < 3:
        raise UserError(f"config.data.min_frames={config.data.min_frames}: a clip needs at "
                        "least 3 frames (first, last, one in between).")
    check_frame_size(config.data.height, config.data.width, len(config.model.widths))
    check_blend_init(config.model.blend_init, config.model.candidate_statistics)


def dataset_kind(config: ml_collections.ConfigDict) -> str:
    """The kind of dataset the refiner trains on: "candidates" or "clips"."""
    return "candidates" if config.model.candidate_statistics else "clips"


def check_candidates(config: ml_collections.ConfigDict, fingerprint: str) -> None:
    """A candidates dataset must exist, be drawn through this tokenizer, and hold whole clips
    of `data.max_frames` frames (a crop would lose the given frames)."""
    data = config.data
    name = tfds_io.variant_name(data.dataset, "candidates")
    if not tfds_io.dataset_exists(data.data_root, name):
        raise UserError(f"no {name} dataset in {data.data_root}: draw it with a bundle of the GPT "
                        "whose output this refiner will refine: `python -m data_prep.candidates "
                        f"--bundle=DIR --data_root={data.data_root} --num_clips=train:1024 "
                        f"--num_clips={config.eval.split}:256`.")
    metadata = tfds_io.read_metadata(data.data_root, name)
    if metadata["tokenizer"]["fingerprint"] != fingerprint:
        raise UserError(f"{tfds_io.dataset_path(data.data_root, name)} was drawn through another "
                        f"tokenizer ({metadata['tokenizer']['workdir']}) than "
                        f"config.tokenizer.workdir={config.tokenizer.workdir}; draw it again.")
    num_frames = metadata["draws"]["num_frames"]
    if not data.min_frames == data.max_frames == num_frames:
        raise UserError(f"{name} holds clips of {num_frames} frames: set config.data.min_frames "
                        f"and max_frames to {num_frames}.")


def build_fns(config: ml_collections.ConfigDict, tokenizer: Any) -> refiner_step.StepFns:
    return refiner_step.StepFns(
        model=FrameRefiner(**config.model),
        tx=optimizers.adam(config.optimizer.lr, config.optimizer, config.train.num_steps),
        tokenizer=tokenizer.model, grid_shape=tokenizer.grid_shape)


class RefinerTask:
    """Everything stage 3 needs from the shared loop, on one mesh."""

    def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
        self.config = config
        self.mesh = mesh
        check_config(config, mesh)
        tokenizer = load_tokenizer(config.tokenizer.workdir, mesh)
        if tokenizer.frame_shape != (config.data.height, config.data.width, 3):
            raise UserError(f"the tokenizer in {config.tokenizer.workdir} takes frames of "
                            f"{tokenizer.frame_shape}, the config's data "
                            f"{config.data.height}x{config.data.width}: set config.data to match.")
        if config.model.candidate_statistics:
            check_candidates(config, tokenizer.fingerprint())
        self.tokenizer_params = tokenizer.params
        self.fns = build_fns(config, tokenizer)
        self.frame_shape = tokenizer.frame_shape
        replicated = mesh_lib.replicated(mesh)
        batch = mesh_lib.batch_sharding(mesh)
        self.lpips_params = jax.device_put(load_lpips_params(), replicated)
        abstract = jax.eval_shape(self._init, jax.random.key(0))
        self.state_shardings = jax.tree.map(lambda _: replicated, abstract)
        self._abstract = checkpointing.abstract_with_shardings(abstract, self.state_shardings)
        self._step = jax.jit(refiner_step.make_train_step(self.fns, config.loss),
                             in_shardings=(self.state_shardings,
                                           {"frames": batch, "n_frames": batch},
                                           replicated, replicated, replicated),
                             out_shardings=(self.state_shardings, replicated), donate_argnums=0)
        self._batch = batch
        self._eval_batches: list[dict[str, np.ndarray]] | None = None
        self._eval_sums = jax.jit(functools.partial(refiner_step.eval_sums, fns=self.fns),
                                  in_shardings=(self.state_shardings.params, batch, batch, batch,
                                                replicated, replicated),
                                  out_shardings=replicated)

    def _init(self, rng: jax.Array) -> refiner_step.RefinerState:
        return refiner_step.init_state(rng, self.fns, self.frame_shape)

    def abstract_state(self) -> Any:
        return self._abstract

    def init_state(self, rng: jax.Array) -> refiner_step.RefinerState:
        return mesh_lib.run_once(self._init, rng, out_shardings=self.state_shardings)

    def train_batches(self, data_state: bytes | None) -> Iterator[tuple[dict, bytes]]:
        data = self.config.data
        kind = dataset_kind(self.config)
        iterator = iter(pipeline.clips_loader(
            data.data_root, tfds_io.variant_name(data.dataset, kind), data.train_split,
            global_batch_size=self.config.train.batch_size, max_frames=data.max_frames,
            min_frames=data.min_frames,
            options=pipeline.LoaderOptions.from_config(data, self.config.seed), kind=kind))
        if data_state is not None:
            iterator.set_state(data_state)
        return pipeline.prefetch_to_mesh(iterator, self.mesh, size=data.prefetch,
                                        data_axis=mesh_lib.BATCH_AXES, with_state=True)

    def train_step(self, state, batch, rng, step):
        return self._step(state, batch, rng, self.tokenizer_params, self.lpips_params)

    def periodic(self, state, step: int, writer: MetricWriter, last_batch: dict,
                 clock: TrainingClock) -> None:
        if step % self.config.eval.every == 0:
            writer.scalars(step, {**self.evaluate(state), **clock.read()}, prefix="eval")

    def _held_out_batches(self) -> list[dict[str, np.ndarray]]:
        """The first eval clips (at most `data.max_frames` frames of each, from their start),
        padded with empty clips (n_frames 0, which the sums skip) to whole batches."""
        if self._eval_batches is None:
            cfg = self.config
            self._eval_batches = tfds_io.first_clip_batches(
                cfg.data.data_root, tfds_io.variant_name(cfg.data.dataset, dataset_kind(cfg)),
                cfg.eval.split, "frames", min_frames=cfg.data.min_frames,
                max_frames=cfg.data.max_frames, batch_size=cfg.eval.batch_size,
                num_batches=cfg.eval.num_batches, dtype=np.uint8)
        return self._eval_batches

    def evaluate(self, state: refiner_step.RefinerState) -> dict[str, float]:
        """Mean L1 / LPIPS / PSNR over every in-between of the first held-out clips, refined and
        plainly decoded, and the LPIPS the refiner removes (`lpips_gain`)."""
        place = lambda v: jax.make_array_from_callback(v.shape, self._batch,
                                                       lambda index: v[index])
        totals: dict[str, float] = {}
        seen = 0
        for batch in self._held_out_batches():
            frames, n_frames = place(batch["frames"]), place(batch["n_frames"])
            for index in range(1, self.config.data.max_frames - 1):
                sums = jax.device_get(self._eval_sums(
                    state.params, frames, n_frames, place(np.full_like(batch["n_frames"], index)),
                    self.tokenizer_params, self.lpips_params))
                seen += int(sums.pop("count"))
                for k, v in sums.items():
                    totals[k] = totals.get(k, 0.0) + float(v)
        result = {k: v / max(seen, 1) for k, v in totals.items()}
        if seen:
            result["lpips_gain"] = result["lpips_decoded"] - result["lpips"]
        result["num_frames"] = float(seen)
        return result
