"""Building blocks of the taming-transformers VQ-GAN, in NHWC.

Submodule names mirror the PyTorch layer names (norm1, conv1, nin_shortcut, q, k, v, proj_out,
conv) so that `ganime_jax.convert.taming` is a pure name/layout mapping. Normalisation and the
attention softmax run in float32 whatever the compute dtype.

GANime's TensorFlow VQ-GAN differs from taming in three layers, each a field here: it
downsamples by 2x2 average pooling then a 3x3 conv (`Downsample.kind`), upsamples bilinearly
then applies a 3x3 conv (`Upsample.kind`), and its attention (Keras' `layers.Attention`
defaults) does not scale the scores by 1/sqrt(channels) (`AttnBlock.scaled`).
"""
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ganime_jax.errors import UserError

GROUP_NORM_EPS = 1e-6  # taming's Normalize() (and GANime's); configs set `model.norm_eps`

# PyTorch's default Conv2d/Linear kernel init (kaiming_uniform with a=sqrt(5)): U(+-1/sqrt(fan_in)).
TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

DType = Any


def canonical_dtype(dtype: str | DType) -> jnp.dtype:
    """Accepts a dtype or its name ("float32", "bfloat16") as configs give it."""
    try:
        return jnp.dtype(dtype)
    except TypeError as error:
        raise UserError(f"unknown dtype {dtype!r}: use 'float32' or 'bfloat16'") from error


def conv(features: int, kernel: int, name: str | None, dtype: DType, param_dtype: DType,
         strides: int = 1, padding: Any = None) -> nn.Conv:
    """A conv with taming's "same" padding (kernel // 2 each side) unless `padding` is given.

    `name` is None inside `setup`, where the attribute name names the module.
    """
    if padding is None:
        padding = ((kernel // 2, kernel // 2),) * 2
    return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=padding,
                   dtype=dtype, param_dtype=param_dtype, kernel_init=TORCH_KERNEL_INIT,
                   name=name)


class GroupNorm(nn.Module):
    """GroupNorm over (H, W, channels of the group), statistics and affine in float32.

    Returns `dtype`. Two-pass variance (mean first), so large activations keep their precision.
    per_position: statistics over the group's channels at each position only (with one group,
    a LayerNorm over channels), so an output depends on nothing outside the conv stack's
    receptive field.
    """
    num_groups: int
    epsilon: float = GROUP_NORM_EPS
    dtype: DType = jnp.float32
    scale_init: Callable = nn.initializers.ones
    per_position: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        if channels % self.num_groups:
            raise UserError(f"{channels} channels cannot be split into {self.num_groups} "
                            "normalisation groups: make the channel counts multiples of "
                            "`norm_groups`")
        scale = self.param("scale", self.scale_init, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        batch = x.shape[0]
        x = x.astype(jnp.float32)
        if self.per_position:
            groups = x.reshape(*x.shape[:-1], self.num_groups, channels // self.num_groups)
            centred = groups - jnp.mean(groups, axis=-1, keepdims=True)
            inv_std = jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
                                    + self.epsilon)
            return ((centred * inv_std).reshape(x.shape) * scale + bias).astype(self.dtype)
        count = x[0].size // self.num_groups

        def group_mean(values: jax.Array) -> jax.Array:
            # Per-channel sums over the positions of a (batch, positions, channels) view, then
            # over each group's channels: on CPU ~5x faster than reducing a
            # (..., groups, channels per group) view in one go.
            sums = jnp.sum(values.reshape(batch, -1, channels), axis=1)
            sums = sums.reshape(batch, self.num_groups, channels // self.num_groups)
            means = jnp.sum(sums, axis=2, keepdims=True) / count
            return jnp.broadcast_to(means, sums.shape).reshape(batch, *([1] * (x.ndim - 2)),
                                                                channels)

        centred = x - group_mean(x)
        inv_std = jax.lax.rsqrt(group_mean(jnp.square(centred)) + self.epsilon)
        return (centred * (inv_std * scale) + bias).astype(self.dtype)


class ResnetBlock(nn.Module):
    """norm1-swish-conv1-norm2-swish-dropout-conv2 plus a 1x1 `nin_shortcut` if widths differ."""
    out_channels: int
    num_groups: int
    dropout: float = 0.0
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32
    norm_eps: float = GROUP_NORM_EPS
    per_position_norm: bool = False  # see GroupNorm.per_position
    kernel_size: int = 3  # 1: a per-position MLP block

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        norm = dict(epsilon=self.norm_eps, dtype=self.dtype, per_position=self.per_position_norm)
        h = nn.swish(GroupNorm(self.num_groups, name="norm1", **norm)(x))
        h = conv(self.out_channels, self.kernel_size, "conv1", self.dtype, self.param_dtype)(h)
        h = nn.swish(GroupNorm(self.num_groups, name="norm2", **norm)(h))
        if self.dropout > 0:
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = conv(self.out_channels, self.kernel_size, "conv2", self.dtype, self.param_dtype)(h)
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, "nin_shortcut", self.dtype, self.param_dtype)(x)
        return x.astype(self.dtype) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, residual.

    q, k, v and proj_out are taming's 1x1 convs, written as Dense layers on the channel axis.
    """
    num_groups: int
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32
    norm_eps: float = GROUP_NORM_EPS
    scaled: bool = True  # scores times 1/sqrt(channels) (taming); False: GANime's TF layers

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape

        def project(name: str, h: jax.Array) -> jax.Array:
            return nn.Dense(channels, dtype=self.dtype, param_dtype=self.param_dtype,
                            kernel_init=TORCH_KERNEL_INIT, name=name)(h)

        h = GroupNorm(self.num_groups, self.norm_eps, self.dtype, name="norm")(x)
        h = h.reshape(batch, height * width, channels)
        q, k, v = project("q", h), project("k", h), project("v", h)
        scores = jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=jnp.float32)
        if self.scaled:
            scores = scores * channels ** -0.5
        weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.einsum("bqk,bkc->bqc", weights, v)
        out = project("proj_out", out).reshape(x.shape)
        return x.astype(self.dtype) + out


DOWNSAMPLE_KINDS = ("strided_conv", "avgpool_conv")
UPSAMPLE_KINDS = ("nearest_conv", "bilinear_conv")


def check_kind(field: str, kind: str, kinds: tuple[str, ...]) -> None:
    """A UserError unless `kind` is one of `kinds`; `field` is its config path."""
    if kind not in kinds:
        raise UserError(f"{field}={kind!r} is not a known kind: use one of "
                        f"{', '.join(map(repr, kinds))}")


class Downsample(nn.Module):
    """Halves H and W. kind "strided_conv" (taming): an asymmetric pad (0 before, 1 after, on H
    and W) then a 3x3 stride-2 conv; "avgpool_conv" (GANime's TF): 2x2 average pooling, then a
    3x3 "same" conv."""
    channels: int
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32
    kind: str = "strided_conv"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        check_kind("model.downsample", self.kind, DOWNSAMPLE_KINDS)
        if self.kind == "avgpool_conv":
            pooled = nn.avg_pool(x, (2, 2), strides=(2, 2))
            return conv(self.channels, 3, "conv", self.dtype, self.param_dtype)(pooled)
        return conv(self.channels, 3, "conv", self.dtype, self.param_dtype, strides=2,
                    padding=((0, 1), (0, 1)))(x)


def bilinear_upsample(x: jax.Array) -> jax.Array:
    """x2 bilinear upsampling of (B, H, W, C), half-pixel centres, edges clamped: TF's
    `UpSampling2D(interpolation="bilinear")` and PyTorch's `align_corners=False`.

    Output row 2i is 0.25 x[i-1] + 0.75 x[i] and row 2i+1 is 0.75 x[i] + 0.25 x[i+1] (the
    same along W), with x[-1] = x[0] and x[H] = x[H-1].
    """
    for axis in (1, 2):
        size = x.shape[axis]
        before = jnp.concatenate([jax.lax.slice_in_dim(x, 0, 1, axis=axis),
                                  jax.lax.slice_in_dim(x, 0, size - 1, axis=axis)], axis=axis)
        after = jnp.concatenate([jax.lax.slice_in_dim(x, 1, size, axis=axis),
                                 jax.lax.slice_in_dim(x, size - 1, size, axis=axis)], axis=axis)
        even, odd = 0.25 * before + 0.75 * x, 0.75 * x + 0.25 * after
        shape = list(x.shape)
        shape[axis] = 2 * size
        x = jnp.stack([even, odd], axis=axis + 1).reshape(shape)
    return x


# Nearest x2 then a 3x3 conv equals, for each output parity p (per axis), a 2-tap conv on the
# low-resolution input: parity 0 reads rows (i-1, i) with taps (k0, k1+k2), parity 1 reads
# rows (i, i+1) with taps (k0+k1, k2). Same parameters and result, 2.25x fewer FLOPs.
_PARITY_TAPS = (((0,), (1, 2)), ((0, 1), (2,)))
_PARITY_PADDING = ((1, 0), (0, 1))


def _parity_kernel(kernel: jax.Array, axis: int, parity: int) -> jax.Array:
    taps = [jnp.sum(jnp.take(kernel, jnp.array(rows), axis=axis), axis=axis, keepdims=True)
            for rows in _PARITY_TAPS[parity]]
    return jnp.concatenate(taps, axis=axis)


class ConvParams(nn.Module):
    """The kernel (HWIO) and bias of a conv that the caller applies itself."""
    features: int
    kernel_size: int
    param_dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array]:
        shape = (self.kernel_size, self.kernel_size, in_features, self.features)
        kernel = self.param("kernel", TORCH_KERNEL_INIT, shape, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        return kernel, bias


class Upsample(nn.Module):
    """Doubles H and W, then a 3x3 conv (params conv/kernel, conv/bias as in taming).

    kind "nearest_conv" (taming): nearest-neighbour x2, computed as four 2x2 convs on the
    low-resolution input, interleaved; "bilinear_conv" (GANime's TF): `bilinear_upsample`,
    then the conv at full resolution.
    """
    channels: int
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32
    kind: str = "nearest_conv"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        check_kind("model.upsample", self.kind, UPSAMPLE_KINDS)
        batch, height, width, _ = x.shape
        kernel, bias = ConvParams(self.channels, 3, self.param_dtype, name="conv")(x.shape[-1])
        x = x.astype(self.dtype)
        if self.kind == "bilinear_conv":
            out = jax.lax.conv_general_dilated(
                bilinear_upsample(x), kernel.astype(self.dtype), (1, 1), ((1, 1), (1, 1)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return out + bias.astype(self.dtype)
        rows = []
        for row_parity in range(2):
            row_kernel = _parity_kernel(kernel, 0, row_parity)
            cols = [jax.lax.conv_general_dilated(
                x, _parity_kernel(row_kernel, 1, col_parity).astype(self.dtype), (1, 1),
                (_PARITY_PADDING[row_parity], _PARITY_PADDING[col_parity]),
                dimension_numbers=("NHWC", "HWIO", "NHWC")) for col_parity in range(2)]
            rows.append(jnp.stack(cols, axis=3))  # (B, h, w, 2, C)
        out = jnp.stack(rows, axis=2).reshape(batch, 2 * height, 2 * width, self.channels)
        return out + bias.astype(self.dtype)
