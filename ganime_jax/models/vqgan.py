"""Stage 1: the taming-transformers VQ-GAN (VQModel) frame tokenizer, NHWC.

frames (B, H, W, 3) in [-1, 1] -> Encoder -> quant_conv -> VectorQuantizer -> post_quant_conv
-> Decoder -> frames. With L = len(channel_multipliers) levels the encoder downsamples L-1
times, so the token grid is (H / 2^(L-1), W / 2^(L-1)): 64x128 -> 8x16 for the reference.

Attention placement follows taming: a nominal `resolution` is halved at each downsampling and an
AttnBlock follows every ResnetBlock of a level whose nominal resolution is in
`attention_resolutions` (plus the one in `mid`). The input's true size plays no part, so the
layer set (and checkpoint compatibility) depends on the config only. For GANime's 64x128 frames
`resolution` is the width, 128: attention at 16 then sits at the lowest (8x16) level.
`attention_placement="ganime_tf"` follows GANime's TensorFlow encoder instead, which halves its
counter only after adding an attention block (`encoder_attention`); its decoder counts as
taming's does.

Parameter paths mirror the PyTorch names (encoder/down_0/block_0/norm1, decoder/up_3/attn_1/q,
encoder/mid/attn_1, quantize/embedding, ...); see `ganime_jax.convert.taming`.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ganime_jax.errors import UserError
from ganime_jax.models.layers import (GROUP_NORM_EPS, AttnBlock, Downsample, GroupNorm,
                                      ResnetBlock, Upsample, canonical_dtype, check_kind, conv)
from ganime_jax.models.quantizer import VectorQuantizer, codebook_stats

OUTPUT_LAYER = ("decoder", "conv_out")  # params path of the layer taming's adaptive weight uses
ATTENTION_PLACEMENTS = ("taming", "ganime_tf")


def encoder_attention(resolution: int, attention_resolutions: Sequence[int], num_levels: int,
                      num_blocks: int, placement: str) -> list[tuple[bool, ...]]:
    """Per encoder level, whether an AttnBlock follows each of its ResnetBlocks.

    "taming": the nominal resolution halves at each downsampling. "ganime_tf": GANime's
    TensorFlow encoder halves it only right after adding an attention block, never at a
    downsampling, so with its configs (resolution 128, attention at 16) no level has one.
    """
    check_kind("model.attention_placement", placement, ATTENTION_PLACEMENTS)
    levels, current = [], resolution
    for level in range(num_levels):
        flags = []
        for _ in range(num_blocks):
            flags.append(current in attention_resolutions)
            if placement == "ganime_tf" and flags[-1]:
                current //= 2
        levels.append(tuple(flags))
        if placement == "taming" and level != num_levels - 1:
            current //= 2
    return levels


class MidBlock(nn.Module):
    """block_1 -> attn_1 -> block_2 at the lowest resolution."""
    num_groups: int
    dropout: float
    dtype: Any
    param_dtype: Any
    norm_eps: float = GROUP_NORM_EPS
    scaled_attention: bool = True

    @nn.compact
    def __call__(self, h: jax.Array, train: bool) -> jax.Array:
        channels = h.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, norm_eps=self.norm_eps)
        h = ResnetBlock(channels, self.num_groups, self.dropout, name="block_1", **kw)(h, train)
        h = AttnBlock(self.num_groups, name="attn_1", scaled=self.scaled_attention, **kw)(h)
        return ResnetBlock(channels, self.num_groups, self.dropout, name="block_2", **kw)(h, train)


class Level(nn.Module):
    """One resolution level: a ResnetBlock per entry of `attention` (followed by an AttnBlock
    where the entry is True), then an optional `downsample` (encoder) or `upsample` (decoder)
    of kind `resample_kind`."""
    out_channels: int
    attention: Sequence[bool]
    resample: str  # "downsample", "upsample" or "" (none)
    num_groups: int
    dropout: float
    dtype: Any
    param_dtype: Any
    resample_kind: str  # a Downsample or Upsample kind (see `layers`)
    norm_eps: float = GROUP_NORM_EPS
    scaled_attention: bool = True
    per_position_norm: bool = False  # see layers.GroupNorm.per_position

    @nn.compact
    def __call__(self, h: jax.Array, train: bool) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm = dict(kw, norm_eps=self.norm_eps)
        for i, attention in enumerate(self.attention):
            h = ResnetBlock(self.out_channels, self.num_groups, self.dropout, name=f"block_{i}",
                            per_position_norm=self.per_position_norm, **norm)(h, train)
            if attention:
                h = AttnBlock(self.num_groups, name=f"attn_{i}", scaled=self.scaled_attention,
                              **norm)(h)
        if self.resample == "downsample":
            h = Downsample(self.out_channels, name="downsample", kind=self.resample_kind, **kw)(h)
        elif self.resample == "upsample":
            h = Upsample(self.out_channels, name="upsample", kind=self.resample_kind, **kw)(h)
        return h


def space_to_depth(x: jax.Array, patch: int) -> jax.Array:
    """(B, H, W, C) -> (B, H/p, W/p, p*p*C): each p x p patch becomes one position."""
    batch, height, width, channels = x.shape
    x = x.reshape(batch, height // patch, patch, width // patch, patch, channels)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, height // patch, width // patch, -1)


def depth_to_space(x: jax.Array, patch: int) -> jax.Array:
    """The inverse of `space_to_depth` (a pixel shuffle)."""
    batch, height, width, depth = x.shape
    channels = depth // (patch * patch)
    x = x.reshape(batch, height, width, patch, patch, channels)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, height * patch, width * patch, channels)


class Encoder(nn.Module):
    channels: int
    channel_multipliers: Sequence[int]
    num_res_blocks: int
    attention_resolutions: Sequence[int]
    resolution: int
    z_channels: int
    dropout: float
    num_groups: int
    dtype: Any
    param_dtype: Any
    patch_size: int = 1
    norm_eps: float = GROUP_NORM_EPS
    scaled_attention: bool = True
    downsample: str = "strided_conv"
    attention_placement: str = "taming"
    local: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attn = dict(norm_eps=self.norm_eps, scaled_attention=self.scaled_attention)
        num_levels = len(self.channel_multipliers)
        if self.patch_size > 1:
            x = space_to_depth(x, self.patch_size)
        h = conv(self.channels, 3, "conv_in", **kw)(x.astype(self.dtype))
        attention = encoder_attention(self.resolution, self.attention_resolutions, num_levels,
                                      self.num_res_blocks, self.attention_placement)
        if self.local:
            attention = [(False,) * len(flags) for flags in attention]
        groups = 1 if self.local else self.num_groups
        for i, mult in enumerate(self.channel_multipliers):
            last = i == num_levels - 1
            h = Level(self.channels * mult, attention[i], "" if last else "downsample",
                      groups, self.dropout, name=f"down_{i}", resample_kind=self.downsample,
                      per_position_norm=self.local, **attn, **kw)(h, train)
        if not self.local:
            h = MidBlock(self.num_groups, self.dropout, name="mid", **attn, **kw)(h, train)
        h = nn.swish(GroupNorm(groups, self.norm_eps, self.dtype, name="norm_out",
                               per_position=self.local)(h))
        return conv(self.z_channels, 3, "conv_out", **kw)(h)


class PatchEncoder(nn.Module):
    """An encoder that sees one token's pixel patch and nothing else.

    The frame is cut into `factor` x `factor` patches (space-to-depth), and the same residual
    MLP (1x1 convs, per-position norms) runs on each: `num_res_blocks` blocks per entry of
    `channel_multipliers`, all at the widest level's width (a patch holds factor^2 pixels, so
    a first level's narrow width would be a bottleneck). Identical patches therefore give
    identical latents, wherever and whenever they appear: an unchanged background keeps its
    token.
    """
    channels: int
    channel_multipliers: Sequence[int]
    num_res_blocks: int
    z_channels: int
    factor: int
    dropout: float
    dtype: Any
    param_dtype: Any
    norm_eps: float = GROUP_NORM_EPS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        width = self.channels * max(self.channel_multipliers)
        h = conv(width, 1, "conv_in", **kw)(space_to_depth(x, self.factor).astype(self.dtype))
        for i in range(len(self.channel_multipliers)):
            for j in range(self.num_res_blocks):
                h = ResnetBlock(width, 1, self.dropout, name=f"block_{i}_{j}",
                                norm_eps=self.norm_eps, per_position_norm=True, kernel_size=1,
                                **kw)(h, train)
        h = nn.swish(GroupNorm(1, self.norm_eps, self.dtype, name="norm_out",
                               per_position=True)(h))
        return conv(self.z_channels, 1, "conv_out", **kw)(h)


class Decoder(nn.Module):
    channels: int
    channel_multipliers: Sequence[int]
    num_res_blocks: int
    attention_resolutions: Sequence[int]
    resolution: int
    out_channels: int
    output_tanh: bool
    dropout: float
    num_groups: int
    dtype: Any
    param_dtype: Any
    patch_size: int = 1
    norm_eps: float = GROUP_NORM_EPS
    scaled_attention: bool = True
    upsample: str = "nearest_conv"

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attn = dict(norm_eps=self.norm_eps, scaled_attention=self.scaled_attention)
        mults = tuple(self.channel_multipliers)
        num_levels = len(mults)
        self.conv_in = conv(self.channels * mults[-1], 3, None, **kw)
        self.mid = MidBlock(self.num_groups, self.dropout, **attn, **kw)
        # `up` is indexed by level (0 = full resolution) like taming's decoder.up; it runs
        # from the last level to the first.
        levels = []
        current = self.resolution // 2 ** (num_levels - 1)
        for i in reversed(range(num_levels)):
            attention = (current in self.attention_resolutions,) * (self.num_res_blocks + 1)
            levels.append(Level(self.channels * mults[i], attention, "upsample" if i else "",
                                self.num_groups, self.dropout, resample_kind=self.upsample,
                                **attn, **kw))
            current = current * 2 if i else current
        self.up = levels[::-1]
        self.norm_out = GroupNorm(self.num_groups, self.norm_eps, self.dtype)
        self.conv_out = conv(self.out_channels * self.patch_size ** 2, 3, None, **kw)

    def __call__(self, z: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """-> (frames float32, the features fed to conv_out)."""
        h = self.mid(self.conv_in(z.astype(self.dtype)), train)
        for level in reversed(self.up):
            h = level(h, train)
        features = nn.swish(self.norm_out(h))
        return self.output_layer(features), features

    def output_layer(self, features: jax.Array) -> jax.Array:
        out = self.conv_out(features).astype(jnp.float32)
        if self.patch_size > 1:
            out = depth_to_space(out, self.patch_size)
        return jnp.tanh(out) if self.output_tanh else out


def check_encoder_choice(encoder_local: bool, encoder_per_patch: bool) -> None:
    """One-line error for the two local encoders set at once."""
    if encoder_local and encoder_per_patch:
        raise UserError("`encoder_local` and `encoder_per_patch` are both set: choose one "
                        "(a per-patch encoder is already local)")


class VQGAN(nn.Module):
    """Defaults are GANime's reference (kny, 64x128 frames) sizes.

    in_channels/out_channels: image channels. channels: base width; level i has
    channels * channel_multipliers[i] channels. num_res_blocks: ResnetBlocks per encoder level
    (decoder levels have one more). attention_resolutions, resolution, attention_placement
    ("taming" or "ganime_tf"): see the module docstring.
    z_channels: encoder output / decoder input width. num_embeddings x embedding_dim: codebook.
    beta, legacy_loss, l2_normalize_codes, lookup_dim: see `quantizer`. norm_groups: GroupNorm
    groups (taming: 32). norm_eps: GroupNorm epsilon (taming and GANime: 1e-6; TorchGANime's
    `Normalize` uses 6.1e-5). output_tanh: squash the decoder output into [-1, 1] (both GANime
    implementations do; taming does not). patch_size: > 1 folds each p x p pixel patch into
    channels before the encoder's first conv and unfolds the decoder's last conv (a pixel
    shuffle), so no layer runs at full resolution; the token grid is then (H, W) /
    (p * 2^(levels-1)). 1 is taming's layout. downsample ("strided_conv" or "avgpool_conv"),
    upsample ("nearest_conv" or "bilinear_conv"), scaled_attention: taming's layers, or
    (avgpool_conv, bilinear_conv, False) GANime's TensorFlow ones; see `layers`.
    encoder_local (ours; the originals have False): an encoder whose tokens depend only on the
    pixels around them, so that a thing that moves moves its tokens and an unchanged
    background keeps its own: no attention, no mid block, and each norm takes its statistics
    over the channels of one position (a LayerNorm) instead of over the whole frame. (A
    taming encoder's frame-wide norms and attention let one changed patch change tokens
    anywhere.) The decoder is unchanged. encoder_per_patch (ours): stricter still, an MLP on
    each token's own pixel patch (`PatchEncoder`), so that identical patches get identical
    tokens. dtype:
    compute dtype ("float32" or "bfloat16");
    parameters, GroupNorm and the quantiser stay float32.
    """
    in_channels: int = 3
    out_channels: int = 3
    channels: int = 32
    channel_multipliers: Sequence[int] = (2, 4, 8, 8)
    num_res_blocks: int = 1
    attention_resolutions: Sequence[int] = (16,)
    resolution: int = 128
    z_channels: int = 512
    dropout: float = 0.0
    num_embeddings: int = 1024
    embedding_dim: int = 128
    beta: float = 0.25
    legacy_loss: bool = False
    l2_normalize_codes: bool = False
    lookup_dim: int = 0
    norm_groups: int = 32
    norm_eps: float = GROUP_NORM_EPS
    output_tanh: bool = True
    patch_size: int = 1
    downsample: str = "strided_conv"
    upsample: str = "nearest_conv"
    scaled_attention: bool = True
    attention_placement: str = "taming"
    encoder_local: bool = False
    encoder_per_patch: bool = False
    dtype: Any = "float32"
    param_dtype: Any = "float32"

    def setup(self):
        if not self.channel_multipliers:
            raise UserError("`channel_multipliers` is empty: give one multiplier per level")
        compute, params = canonical_dtype(self.dtype), canonical_dtype(self.param_dtype)
        shared = dict(channels=self.channels, channel_multipliers=tuple(self.channel_multipliers),
                      num_res_blocks=self.num_res_blocks,
                      attention_resolutions=tuple(self.attention_resolutions),
                      resolution=self.resolution, dropout=self.dropout,
                      num_groups=self.norm_groups, dtype=compute, param_dtype=params,
                      patch_size=self.patch_size, norm_eps=self.norm_eps,
                      scaled_attention=self.scaled_attention)
        check_encoder_choice(self.encoder_local, self.encoder_per_patch)
        if self.encoder_per_patch:
            self.encoder = PatchEncoder(
                self.channels, tuple(self.channel_multipliers), self.num_res_blocks,
                self.z_channels, self.downsampling_factor, self.dropout, compute, params,
                self.norm_eps)
        else:
            self.encoder = Encoder(z_channels=self.z_channels, downsample=self.downsample,
                                   attention_placement=self.attention_placement,
                                   local=self.encoder_local, **shared)
        self.quant_conv = conv(self.embedding_dim, 1, None, compute, params)
        self.quantize = VectorQuantizer(self.num_embeddings, self.embedding_dim, self.beta,
                                        self.legacy_loss, self.l2_normalize_codes,
                                        self.lookup_dim)
        self.post_quant_conv = conv(self.z_channels, 1, None, compute, params)
        self.decoder = Decoder(out_channels=self.out_channels, output_tanh=self.output_tanh,
                               upsample=self.upsample, **shared)

    @property
    def downsampling_factor(self) -> int:
        return self.patch_size * 2 ** (len(self.channel_multipliers) - 1)

    def _check_frames(self, frames: jax.Array) -> None:
        factor = self.downsampling_factor
        if frames.ndim != 4 or frames.shape[-1] != self.in_channels:
            raise UserError(f"frames of shape {frames.shape} given: expected (batch, height, "
                            f"width, {self.in_channels})")
        if frames.shape[1] % factor or frames.shape[2] % factor:
            raise UserError(f"frame size {frames.shape[1]}x{frames.shape[2]} is not a multiple "
                            f"of {factor} (2^(levels-1)): resize or crop the frames")

    def _quantize(self, frames: jax.Array, train: bool) -> tuple[jax.Array, dict]:
        self._check_frames(frames)
        z = self.quant_conv(self.encoder(frames, train))
        return self.quantize(z)

    def __call__(self, frames: jax.Array, train: bool = False) -> tuple[jax.Array, dict]:
        """frames (B, H, W, C) in [-1, 1] -> (reconstruction float32, aux).

        aux: indices (B, h, w) int32; quantizer_loss, codebook_loss, commitment_loss,
        usage_fraction, perplexity (scalars); encoder_latents (B, h, w, code dim) float32 (for
        `restart_dead_codes`); pre_output_features (B, H, W, channels * channel_multipliers[0]):
        the input of the decoder's conv_out, for `decoder_output_layer`. With dropout > 0 and
        train=True, pass rngs={"dropout": key}.
        """
        quantized, aux = self._quantize(frames, train)
        recon, features = self.decoder(self.post_quant_conv(quantized), train)
        aux.update(codebook_stats(aux["indices"], self.num_embeddings))
        aux["pre_output_features"] = features
        return recon, aux

    def encode(self, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
        """frames -> (indices (B, h, w) int32, quantised latents (B, h, w, embedding_dim))."""
        quantized, aux = self._quantize(frames, train=False)
        return aux["indices"], quantized

    def decode_latents(self, latents: jax.Array) -> jax.Array:
        """Quantised latents (B, h, w, embedding_dim) -> frames (B, H, W, C) float32."""
        recon, _ = self.decoder(self.post_quant_conv(latents), train=False)
        return recon

    def decode(self, indices: jax.Array) -> jax.Array:
        """Token indices (B, h, w) -> frames (B, H, W, C) float32 in [-1, 1] (if output_tanh)."""
        return self.decode_latents(self.quantize.lookup(indices))

    def decoder_output_layer(self, features: jax.Array) -> jax.Array:
        """Only the decoder's last layer (conv_out and the tanh): features -> frames.

        With aux["pre_output_features"] this recomputes the reconstruction as a function of
        params["decoder"]["conv_out"] alone, for taming's adaptive discriminator weight.
        """
        return self.decoder.output_layer(features)


def output_layer_params(params: Any) -> Any:
    """params["decoder"]["conv_out"] ({"kernel", "bias"}) of VQGAN params."""
    return params[OUTPUT_LAYER[0]][OUTPUT_LAYER[1]]


def with_output_layer_params(params: Any, layer_params: Any) -> Any:
    """VQGAN params with decoder.conv_out replaced (a new dict; `params` is not modified)."""
    decoder = {**params[OUTPUT_LAYER[0]], OUTPUT_LAYER[1]: layer_params}
    return {**params, OUTPUT_LAYER[0]: decoder}
