"""Stage 1 as a `loop.Task`: data, sharded state, jit-compiled steps, evaluation, images."""
import functools
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from ganime_jax import checkpointing, mesh as mesh_lib
from ganime_jax.data import pipeline, pixels, tfds_io
from ganime_jax.losses.perceptual import load_lpips_params, lpips_distance
from ganime_jax.models import quantizer
from ganime_jax.models.discriminator import NLayerDiscriminator
from ganime_jax.models.layers import check_kind
from ganime_jax.models.vqgan import VQGAN, check_encoder_choice
from ganime_jax.train import optimizers, vqgan_step
from ganime_jax.train.loop import TrainingClock
from ganime_jax.train.summary import MetricWriter, image_grid

IMAGES_IN_GRID = 8


def build_models(config: ml_collections.ConfigDict) -> vqgan_step.StepFns:
    total = config.train.num_steps
    return vqgan_step.StepFns(
        model=VQGAN(**config.model),
        disc=NLayerDiscriminator(**config.discriminator),
        gen_tx=optimizers.adam(config.optimizer.gen_lr, config.optimizer, total),
        disc_tx=optimizers.adam(config.optimizer.disc_lr, config.optimizer, total))


def check_config(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
    """One-line errors for settings that cannot train, before any data is built or loaded
    (otherwise they surface first when the step is traced)."""
    mesh_lib.check_batch_size(config.train.batch_size, mesh)
    mesh_lib.check_batch_size(config.eval.batch_size, mesh, "config.eval.batch_size")
    check_kind("codebook.restart_sampling", config.codebook.restart_sampling,
               quantizer.RESTART_SAMPLING)
    check_encoder_choice(config.model.encoder_local, config.model.encoder_per_patch)


def compile_train_step(fns: vqgan_step.StepFns, config: ml_collections.ConfigDict,
                       mesh: jax.sharding.Mesh, state_shardings: Any, use_disc: bool,
                       use_perceptual: bool = True):
    """The jitted step: batch split over the mesh, state sharded by `state_shardings`, LPIPS
    weights replicated."""
    replicated = mesh_lib.replicated(mesh)
    return jax.jit(
        vqgan_step.make_train_step(fns, config, use_disc, use_perceptual),
        in_shardings=(state_shardings, {"frames": mesh_lib.batch_sharding(mesh)}, replicated,
                      replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0)


def training_phase(loss_cfg: ml_collections.ConfigDict, step: int) -> tuple[bool, bool]:
    """(perceptual loss on, discriminator on) at `step`."""
    return step >= loss_cfg.perceptual_start, step >= loss_cfg.disc_start


# Logical axes of the stage-1 state, read off each leaf's shape: the last (output-feature) axis
# of every conv/dense kernel and of the codebook is "features", which `config.mesh.axis_rules`
# map (configs/vqgan_kny.py: onto the `fsdp` mesh axis); biases, norm scales and counters
# (small) are replicated, as is a kernel whose feature count that axis does not divide.
FEATURES = "features"


def state_shardings(abstract_state: Any, mesh: jax.sharding.Mesh,
                    rules: mesh_lib.AxisRules) -> Any:
    """Shardings of a stage-1 train state (or any tree of its parameters) on `mesh`, with
    the logical-axis `rules` (`mesh_lib.axis_rules(config.mesh)`)."""
    features = nn.logical_to_mesh_axes((FEATURES,), rules)[0]
    names = features if isinstance(features, tuple) else (features,)
    shards = int(np.prod([mesh.shape[name] for name in names if name is not None]))

    def sharding(leaf) -> NamedSharding:
        if leaf.ndim < 2 or leaf.shape[-1] % shards:
            return mesh_lib.replicated(mesh)
        logical = (None,) * (leaf.ndim - 1) + (FEATURES,)
        return NamedSharding(mesh, nn.logical_to_mesh_axes(logical, rules))

    return jax.tree.map(sharding, abstract_state)


class VQGANTask:
    """Everything stage 1 needs from the shared loop, on one mesh."""

    def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
        self.config = config
        self.mesh = mesh
        check_config(config, mesh)
        self.fns = build_models(config)
        self.frame_shape = (config.data.height, config.data.width, config.model.in_channels)
        self.replicated = mesh_lib.replicated(mesh)
        self.lpips_params = jax.device_put(load_lpips_params(), self.replicated)
        abstract = jax.eval_shape(self._init, jax.random.key(0))
        self.state_shardings = state_shardings(abstract, mesh, mesh_lib.axis_rules(config.mesh))
        self._abstract = checkpointing.abstract_with_shardings(abstract, self.state_shardings)
        # One compiled variant per training phase (perceptual loss on?, discriminator on?).
        self._steps = {(perceptual, disc): compile_train_step(
            self.fns, config, mesh, self.state_shardings, disc, perceptual)
            for perceptual in (False, True) for disc in (False, True)}
        self._reconstruct = jax.jit(
            lambda params, frames: _reconstruction(params, frames, fns=self.fns)[0],
            in_shardings=(self.state_shardings.gen_params, self.replicated),
            out_shardings=self.replicated)
        self._eval_sums = jax.jit(
            functools.partial(_eval_sums, fns=self.fns, num_codes=config.model.num_embeddings),
            in_shardings=(self.state_shardings.gen_params, mesh_lib.batch_sharding(mesh),
                          self.replicated),
            out_shardings=self.replicated)

    def _init(self, rng: jax.Array) -> vqgan_step.VQGANState:
        return vqgan_step.init_state(rng, self.fns, self.frame_shape,
                                     self.config.model.num_embeddings)

    def abstract_state(self) -> Any:
        return self._abstract

    def init_state(self, rng: jax.Array) -> vqgan_step.VQGANState:
        return mesh_lib.run_once(self._init, rng, out_shardings=self.state_shardings)

    def _loader(self, split: str, batch_size: int, **options: Any):
        """Frames of `split`; `options` override the config's `pipeline.LoaderOptions`."""
        data = self.config.data
        return pipeline.frames_loader(
            data.data_root, tfds_io.variant_name(data.dataset, "frames"), split,
            global_batch_size=batch_size,
            options=pipeline.LoaderOptions.from_config(data, self.config.seed, **options))

    def train_batches(self, data_state: bytes | None) -> Iterator[tuple[dict, bytes]]:
        loader = self._loader(self.config.data.train_split, self.config.train.batch_size)
        iterator = iter(loader)
        if data_state is not None:
            iterator.set_state(data_state)
        return pipeline.prefetch_to_mesh(iterator, self.mesh, size=self.config.data.prefetch,
                                        data_axis=mesh_lib.BATCH_AXES, with_state=True)

    def train_step(self, state, batch, rng, step):
        return self._steps[training_phase(self.config.loss, step)](state, batch, rng,
                                                                   self.lpips_params)

    def periodic(self, state, step: int, writer: MetricWriter, last_batch: dict,
                 clock: TrainingClock) -> None:
        cfg = self.config
        if step % cfg.train.image_every == 0:
            # every process holds the whole batch, so all run the (replicated) reconstruction
            frames = multihost_utils.process_allgather(last_batch["frames"],
                                                       tiled=True)[:IMAGES_IN_GRID]
            recon = self.reconstruct(state.gen_params, frames)
            writer.image(step, "train/input_over_reconstruction",
                         image_grid([frames, np.asarray(pixels.to_uint8(recon))]))
        if step % cfg.eval.every == 0:
            reached = clock.read()
            writer.scalars(step, {**self.evaluate(state), **reached}, prefix="eval")

    def reconstruct(self, gen_params, frames: np.ndarray) -> np.ndarray:
        """The VQ-GAN's output for `frames` (the same on every process), as floats in [-1, 1]."""
        placed = jax.make_array_from_callback(frames.shape, self.replicated,
                                              lambda index: frames[index])
        return np.asarray(self._reconstruct(gen_params, placed))

    def evaluate(self, state: vqgan_step.VQGANState,
                 num_batches: int | None = None) -> dict[str, float]:
        """Held-out reconstruction PSNR / LPIPS / L1 and codebook usage over `eval.split`.

        Every host reads its shard; the sums are taken over the global batch, so all hosts
        report the figures of the whole evaluation set.
        """
        cfg = self.config
        num_batches = cfg.eval.num_batches if num_batches is None else num_batches
        loader = self._loader(cfg.eval.split, cfg.eval.batch_size, shuffle=False,
                              num_epochs=1)
        totals: dict[str, float] = {}
        counts = np.zeros((cfg.model.num_embeddings,), np.int64)
        seen = 0
        for i, local in enumerate(loader):
            if i >= num_batches:
                break
            frames = pipeline.to_global_batch(local, self.mesh, mesh_lib.BATCH_AXES)["frames"]
            sums, codes = jax.device_get(
                self._eval_sums(state.gen_params, frames, self.lpips_params))
            counts += codes
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + float(v)
            seen += frames.shape[0]
        result = {k: v / max(seen, 1) for k, v in totals.items()}
        probs = counts / max(counts.sum(), 1)
        nonzero = probs[probs > 0]
        result["codebook_usage"] = float(np.mean(counts > 0))
        result["codebook_perplexity"] = float(np.exp(-np.sum(nonzero * np.log(nonzero))))
        result["num_frames"] = float(seen)
        return result


def _reconstruction(gen_params, frames, *, fns: vqgan_step.StepFns):
    """(the VQ-GAN's output clipped to [-1, 1], its aux outputs) for uint8 `frames`."""
    recon, aux = fns.model.apply({"params": gen_params}, pixels.to_unit(frames))
    return jnp.clip(recon, -1.0, 1.0), aux


def _eval_batch(gen_params, frames, lpips_params, *, fns: vqgan_step.StepFns):
    x = pixels.to_unit(frames)
    recon, aux = _reconstruction(gen_params, frames, fns=fns)
    mse = jnp.mean(jnp.square((recon - x) / 2.0), axis=(1, 2, 3))
    stats = {
        "psnr": -10.0 * jnp.log10(jnp.maximum(mse, 1e-10)),
        "lpips": lpips_distance(lpips_params, x, recon),
        "l1": jnp.mean(jnp.abs(recon - x), axis=(1, 2, 3)),
        "indices": aux["indices"],
    }
    return recon, stats


def _eval_sums(gen_params, frames, lpips_params, *, fns: vqgan_step.StepFns, num_codes: int):
    """Sums of the per-frame figures of `_eval_batch` over the batch, and code counts."""
    _, stats = _eval_batch(gen_params, frames, lpips_params, fns=fns)
    codes = jnp.bincount(stats.pop("indices").reshape(-1), length=num_codes)
    return {k: jnp.sum(v) for k, v in stats.items()}, codes
