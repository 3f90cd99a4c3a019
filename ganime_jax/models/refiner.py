"""Stage 3: a small U-Net that refines decoded in-between frames with the two given frames.

A frame decoded from tokens carries the tokenizer's loss everywhere (the demo VQ-GAN's
reconstruction scores LPIPS 0.107 at every position of a clip), while much of an in-between is
still what the first or last frame shows (on the synthetic anime clips 86 % of the pixels one
frame in are within 4 levels of the first frame). Generation has both given frames in full, so
the refiner reads the decoded in-between, the two given frames, their own decoded versions
(where the in-between's decode matches a given frame's, that frame's true pixels belong there)
and the in-between's place in the clip. It outputs softmax weights over (decoded, first, last)
at every pixel plus a residual: copying a given frame where it applies is a weight, not
something the convolutions must learn to reproduce. Images are in [-1, 1], NHWC.

With `candidate_statistics` it also reads what K candidate clips drawn for the same pair of
frames show at the in-between (their per-pixel median, mean and spread; the decoded frame is
then the kept candidate's, see `generation.generate_frames`), and blends their median and
mean as well. Where the draws disagree on where something goes (Moving MNIST's digits after a
few frames), one draw's sharp object is often in the wrong place and costs PSNR twice; the
statistics say where the model is sure.
"""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ganime_jax.errors import UserError
from ganime_jax.models.layers import canonical_dtype

# The images the output blends: the decoded in-between, the first and the last frame, and with
# candidate statistics also the candidates' median and mean.
BLENDED = ("decoded", "first", "last")
BLENDED_WITH_CANDIDATES = BLENDED + ("median", "mean")
# The candidates' per-pixel statistics a refiner with `candidate_statistics` reads, in order.
CANDIDATE_STATISTICS = ("median", "mean", "spread")


def check_frame_size(height: int, width: int, levels: int) -> None:
    """The U-Net halves the frame `levels - 1` times and must be able to double it back."""
    factor = 2 ** (levels - 1)
    if height % factor or width % factor:
        raise UserError(f"a refiner of {levels} levels needs frames whose height and width "
                        f"divide by {factor}, not {height}x{width}: use fewer "
                        "config.model.widths or another frame size.")


def blended_sources(candidate_statistics: bool) -> tuple[str, ...]:
    """The names of the images a refiner's output blends, in the order of `blend_init`."""
    return BLENDED_WITH_CANDIDATES if candidate_statistics else BLENDED


def check_blend_init(blend_init: Sequence[float], candidate_statistics: bool) -> None:
    """`blend_init` holds one initial logit per blended image."""
    sources = blended_sources(candidate_statistics)
    if len(blend_init) != len(sources):
        raise UserError(f"config.model.blend_init has {len(blend_init)} logits; a refiner with "
                        f"candidate_statistics={candidate_statistics} blends {len(sources)} "
                        f"images {sources}: give one logit each.")


class FrameRefiner(nn.Module):
    """widths: channels per level, full resolution first (each further level halves H and W).
    blend_init: the initial logits of the blended images' weights (`blended_sources`); the
    default keeps about 96 % of the decoded frame, so training starts near the plain decode.
    candidate_statistics: whether it reads the statistics of K candidates (module docstring)."""

    widths: Sequence[int] = (32, 64, 96)
    convs_per_level: int = 2
    blend_init: Sequence[float] = (3.0, -1.0, -1.0)
    candidate_statistics: bool = False
    dtype: str = "float32"

    def _conv(self, features: int, strides: int = 1, **kwargs) -> nn.Conv:
        return nn.Conv(features, (3, 3), strides=(strides, strides), padding="SAME",
                       dtype=canonical_dtype(self.dtype), **kwargs)

    @nn.compact
    def __call__(self, decoded: jax.Array, first: jax.Array, last: jax.Array,
                 decoded_first: jax.Array, decoded_last: jax.Array,
                 fraction: jax.Array, statistics: jax.Array | None = None) -> jax.Array:
        """All images (B, H, W, 3) in [-1, 1]; `fraction` (B,): the in-between's index over
        the clip's last index; `statistics` (B, H, W, 3 * 3): the candidates' median, mean and
        spread (CANDIDATE_STATISTICS) in [-1, 1], given exactly when `candidate_statistics`.
        Returns the refined (B, H, W, 3) float32."""
        batch, height, width, _ = decoded.shape
        check_frame_size(height, width, len(self.widths))
        check_blend_init(self.blend_init, self.candidate_statistics)
        if self.candidate_statistics != (statistics is not None):
            raise ValueError(f"candidate statistics {'missing' if statistics is None else 'given'}"
                             f" to a refiner with candidate_statistics={self.candidate_statistics}")
        near_first = jnp.abs(decoded - decoded_first).mean(-1, keepdims=True)
        near_last = jnp.abs(decoded - decoded_last).mean(-1, keepdims=True)
        where = jnp.broadcast_to(fraction.astype(decoded.dtype)[:, None, None, None],
                                 (batch, height, width, 1))
        sources = [decoded, first, last]
        x = [decoded, first, last, decoded_first, decoded_last, near_first, near_last, where]
        if statistics is not None:
            median, mean, _ = jnp.split(statistics, len(CANDIDATE_STATISTICS), axis=-1)
            sources += [median, mean]
            x.append(statistics)
        x = jnp.concatenate(x, axis=-1)
        skips = []
        for level, features in enumerate(self.widths):
            for index in range(self.convs_per_level):
                x = nn.swish(self._conv(features, 2 if level and not index else 1)(x))
            skips.append(x)
        for features, skip in zip(reversed(self.widths[:-1]), reversed(skips[:-1])):
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
            x = jnp.concatenate([x, skip], axis=-1)
            for _ in range(self.convs_per_level):
                x = nn.swish(self._conv(features)(x))
        init = jnp.asarray(self.blend_init, jnp.float32)
        logits = self._conv(len(sources), kernel_init=nn.initializers.zeros,
                            bias_init=lambda *_: init)(x)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        residual = self._conv(3, kernel_init=nn.initializers.zeros)(x).astype(jnp.float32)
        stacked = jnp.stack(sources, axis=-1).astype(jnp.float32)
        return jnp.einsum("bhwcs,bhws->bhwc", stacked, weights) + residual


def init_params(model: FrameRefiner, rng: jax.Array, height: int, width: int) -> Any:
    """A refiner's initial parameters for (height, width) frames."""
    image = jnp.zeros((1, height, width, 3))
    statistics = (jnp.zeros((1, height, width, 3 * len(CANDIDATE_STATISTICS)))
                  if model.candidate_statistics else None)
    return model.init(rng, image, image, image, image, image, jnp.zeros((1,)),
                      statistics)["params"]
