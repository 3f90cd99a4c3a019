"""The frozen stage-1 tokenizer: a trained VQ-GAN's encoder/decoder loaded from its workdir.

Only the generator parameters are read from the newest checkpoint (an Orbax partial restore:
the discriminator and optimiser states stay on disk); the config comes from the same
checkpoint. `encode` maps uint8 frames to flattened token grids, `decode` maps them back.
The pure `encode_frames`/`decode_tokens` can be used inside other jit-compiled functions.
"""
import dataclasses
import hashlib
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from ganime_jax import checkpointing, mesh as mesh_lib
from ganime_jax.data import pixels
from ganime_jax.errors import UserError
from ganime_jax.models.vqgan import VQGAN

GEN_PARAMS = "gen_params"  # field of the stage-1 train state holding the VQ-GAN parameters
TRAIN_HINT = "train stage 1 first: python main.py --config=configs/vqgan_demo.py --workdir={}"


def encode_frames(model: VQGAN, params: Any, frames: jax.Array) -> jax.Array:
    """uint8 frames (B, H, W, 3) -> tokens (B, h*w) int32, the grid flattened row-major."""
    indices, _ = model.apply({"params": params}, pixels.to_unit(frames), method=model.encode)
    return indices.reshape(indices.shape[0], -1).astype(jnp.int32)


def decode_tokens(model: VQGAN, params: Any, grid_shape: tuple[int, int],
                  tokens: jax.Array) -> jax.Array:
    """tokens (B, h*w) -> uint8 frames (B, H, W, 3)."""
    indices = tokens.astype(jnp.int32).reshape(tokens.shape[0], *grid_shape)
    frames = model.apply({"params": params}, indices, method=model.decode)
    return pixels.to_uint8(frames)


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """A frozen VQ-GAN with jit-compiled `encode`/`decode`.

    Without `mesh` everything runs on the first device. With `mesh` the parameters are
    replicated over it and a batch is split over all its devices when its size divides by
    their count (replicated otherwise); outputs stay on the mesh, ready for other computations
    there.
    """

    config: ml_collections.ConfigDict
    model: VQGAN
    params: Any
    step: int
    workdir: pathlib.Path
    mesh: Mesh | None = None

    @property
    def grid_shape(self) -> tuple[int, int]:
        factor = self.model.downsampling_factor
        return self.config.data.height // factor, self.config.data.width // factor

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return self.config.data.height, self.config.data.width, self.config.model.in_channels

    @property
    def frame_tokens(self) -> int:
        return self.grid_shape[0] * self.grid_shape[1]

    @property
    def num_embeddings(self) -> int:
        return self.config.model.num_embeddings

    def __post_init__(self) -> None:
        grid = self.grid_shape
        object.__setattr__(self, "_encode", jax.jit(
            lambda p, f: encode_frames(self.model, p, f)))
        object.__setattr__(self, "_decode", jax.jit(
            lambda p, t: decode_tokens(self.model, p, grid, t)))

    def _place(self, batch: jax.Array | np.ndarray) -> jax.Array:
        if self.mesh is None:
            return jax.device_put(batch, jax.devices()[0])
        split = batch.shape[0] % self.mesh.size == 0
        return jax.device_put(batch, mesh_lib.batch_sharding(self.mesh) if split
                              else mesh_lib.replicated(self.mesh))

    def encode(self, frames: jax.Array | np.ndarray) -> jax.Array:
        """uint8 frames (B, H, W, 3) -> (B, h*w) int32."""
        if tuple(frames.shape[1:]) != self.frame_shape:
            raise UserError(f"frames of shape {tuple(frames.shape)} do not match the tokenizer's "
                            f"(B, {', '.join(map(str, self.frame_shape))}); resize them.")
        return self._encode(self.params, self._place(frames))

    def decode(self, tokens: jax.Array | np.ndarray) -> jax.Array:
        """(B, h*w) tokens -> uint8 frames (B, H, W, 3)."""
        if tokens.ndim != 2 or tokens.shape[1] != self.frame_tokens:
            raise UserError(f"tokens of shape {tuple(tokens.shape)} do not match the tokenizer's "
                            f"(B, {self.frame_tokens}).")
        return self._decode(self.params, self._place(tokens))

    def fingerprint(self) -> str:
        """sha256 of the parameters and grid: identifies what a token dataset was encoded with."""
        digest = hashlib.sha256(repr((self.grid_shape, self.num_embeddings)).encode())
        for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(self.params),
                                 key=lambda item: jax.tree_util.keystr(item[0])):
            digest.update(jax.tree_util.keystr(path).encode())
            digest.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
        return digest.hexdigest()


def _local(mesh: Mesh | None) -> bool:
    """Whether `mesh` (None: the first device) has only this process's devices."""
    return mesh is None or all(d.process_index == jax.process_index() for d in mesh.devices.flat)


def load_tokenizer(workdir: str | pathlib.Path, mesh: Mesh | None = None) -> Tokenizer:
    """The VQ-GAN of the newest checkpoint in a stage-1 workdir, frozen (see `Tokenizer`).

    When `mesh` spans other processes' devices, every process of the run must call it (the read
    is collective); otherwise this process reads alone (process 0 encoding a token dataset while
    the others wait)."""
    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
        raise UserError(f"tokenizer workdir {workdir} does not exist; "
                        + TRAIN_HINT.format(workdir))
    with checkpointing.newest(workdir, "VQ-GAN", TRAIN_HINT.format(workdir),
                              this_process=_local(mesh)) as (manager, step):
        config = ml_collections.ConfigDict(checkpointing.saved_config(manager, step))
        if config.get("stage") != "vqgan":
            raise UserError(f"the checkpoint in {workdir} is of stage {config.get('stage')!r}, "
                            "not a VQ-GAN; give the workdir of a stage-1 (vqgan) run.")
        model = VQGAN(**config.model)
        dummy = jnp.zeros((1, config.data.height, config.data.width, config.model.in_channels))
        abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy)["params"])
        sharding = (mesh_lib.replicated(mesh) if mesh is not None
                    else jax.sharding.SingleDeviceSharding(jax.devices()[0]))
        params = checkpointing.restore_params(manager, step, GEN_PARAMS, abstract, sharding)
    return Tokenizer(config=config, model=model, params=params, step=step, workdir=workdir,
                     mesh=mesh)
