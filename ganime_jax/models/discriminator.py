"""taming's PatchGAN NLayerDiscriminator (pix2pix), NHWC.

conv 4x4/2 + LeakyReLU(0.2); num_layers-1 blocks of conv 4x4/2 + norm + LeakyReLU; conv 4x4/1
+ norm + LeakyReLU; conv 4x4/1 to one logit per patch. Submodules are named `main_<i>` with
taming's `nn.Sequential` indices (activations count), so `loss.discriminator.main.3.weight`
is params["main_3"]["scale"].

`norm` chooses the normalisation of the inner blocks:
- "group" (default): GroupNorm. No state, so the train step stays a pure params -> loss
  function, and statistics are per sample, so they do not depend on how the batch is sharded.
- "batch": BatchNorm as in taming, for taming/TorchGANime discriminator checkpoints. Running
  statistics live in the "batch_stats" collection: `apply({"params": p, "batch_stats": s}, x,
  train=True, mutable=["batch_stats"])` returns (logits, {"batch_stats": new_s}); with
  train=False the stored statistics are used. Batch statistics are taken over the global batch
  of each call (taming calls it separately on real and on fake images).
- "none": no normalisation; the convs then have biases.
"""
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ganime_jax.errors import UserError
from ganime_jax.models.layers import GroupNorm, canonical_dtype

NORMS = ("group", "batch", "none")
KERNEL = 4
PADDING = ((1, 1), (1, 1))
LEAKY_SLOPE = 0.2
MAX_FILTER_MULT = 8
INIT_STD = 0.02  # taming's weights_init: conv N(0, 0.02), norm scale N(1, 0.02)
BATCH_NORM_MOMENTUM = 0.9  # PyTorch BatchNorm2d momentum 0.1
BATCH_NORM_EPS = 1e-5
GROUP_NORM_EPS = 1e-5


def _scale_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    return 1.0 + INIT_STD * jax.random.normal(key, shape, dtype)


class NLayerDiscriminator(nn.Module):
    filters: int = 64
    num_layers: int = 3
    norm: str = "group"
    norm_groups: int = 32
    dtype: Any = "float32"

    def _norm(self, name: str, train: bool) -> Callable[[jax.Array], jax.Array]:
        if self.norm == "batch":
            return nn.BatchNorm(use_running_average=not train, momentum=BATCH_NORM_MOMENTUM,
                                epsilon=BATCH_NORM_EPS, dtype=jnp.float32,
                                scale_init=_scale_init, name=name)
        return GroupNorm(self.norm_groups, epsilon=GROUP_NORM_EPS, dtype=jnp.float32,
                         scale_init=_scale_init, name=name)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Images (B, H, W, C) -> patch logits (B, H', W', 1) float32."""
        if self.norm not in NORMS:
            raise UserError(f"unknown discriminator norm {self.norm!r}: use one of {NORMS}")
        dtype = canonical_dtype(self.dtype)
        index = 0

        def conv_layer(h: jax.Array, features: int, stride: int, use_bias: bool) -> jax.Array:
            return nn.Conv(features, (KERNEL, KERNEL), strides=(stride, stride),
                           padding=PADDING, use_bias=use_bias, dtype=dtype,
                           kernel_init=nn.initializers.normal(INIT_STD),
                           name=f"main_{index}")(h)

        h = conv_layer(x.astype(dtype), self.filters, 2, use_bias=True)
        h = nn.leaky_relu(h, LEAKY_SLOPE)
        index += 2
        strides = [2] * (self.num_layers - 1) + [1]
        for n, stride in enumerate(strides, start=1):
            features = self.filters * min(2 ** n, MAX_FILTER_MULT)
            h = conv_layer(h, features, stride, use_bias=self.norm == "none")
            if self.norm != "none":
                h = self._norm(f"main_{index + 1}", train)(h).astype(dtype)
            h = nn.leaky_relu(h, LEAKY_SLOPE)
            index += 3
        return conv_layer(h, 1, 1, use_bias=True).astype(jnp.float32)
