"""PyTorch references, written by us from the architecture facts (../shared/GANIME_REFERENCE.md).

- `VQModel`: taming-transformers' VQ-GAN with its module names and structure (the layout
  TorchGANime copies), or with GANime's TensorFlow layers (`layers=GANIME_TF`: 2x2 average
  pooling then a "same" 3x3 conv down, bilinear x2 then a 3x3 conv up, attention without the
  1/sqrt(c) scale, its encoder's attention counter). Its state dict is what
  `ganime_jax.convert.taming` reads, so our model can run the very same weights.
- `port_generate`: TorchGANime's sampling procedure with `transformers`' `GPT2LMHeadModel`:
  per frame, encode the previous frame, one forward pass over [countdown token, last frame,
  previous frame], argmax of the last frame-length positions, decode.

The speed benchmarks time our code against these in the same run (`bench_vs_torch.py`); the
converter tests check that converted weights reproduce them (`tests/test_converter.py`).
"""
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

TAMING, GANIME_TF = "taming", "ganime_tf"


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int, eps: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    def __init__(self, c: int, groups: int, eps: float, layers: str):
        super().__init__()
        self.scale = c ** -0.5 if layers == TAMING else 1.0
        self.norm = nn.GroupNorm(groups, c, eps=eps)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        h = self.norm(x)
        q, k, v = (f(h).reshape(b, c, hh * ww) for f in (self.q, self.k, self.v))
        w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) * self.scale, dim=2)
        out = torch.einsum("bij,bcj->bci", w, v).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Resample(nn.Module):
    def __init__(self, c: int, down: bool, layers: str):
        super().__init__()
        self.down, self.layers = down, layers
        strided = down and layers == TAMING
        self.conv = nn.Conv2d(c, c, 3, stride=2 if strided else 1, padding=0 if strided else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down and self.layers == TAMING:
            return self.conv(nn.functional.pad(x, (0, 1, 0, 1)))
        if self.down:
            return self.conv(nn.functional.avg_pool2d(x, 2))
        if self.layers == TAMING:
            return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="bilinear",
                                                   align_corners=False))


def _level(cin: int, cout: int, attention: Sequence[bool], groups: int, eps: float,
           layers: str) -> nn.Module:
    """`attention`: per block, whether an attention block follows it."""
    level = nn.Module()
    level.block, level.attn = nn.ModuleList(), nn.ModuleList()
    for with_attention in attention:
        level.block.append(ResnetBlock(cin, cout, groups, eps))
        cin = cout
        if with_attention:
            level.attn.append(AttnBlock(cout, groups, eps, layers))
    return level


def _run_level(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
    for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn):
            h = level.attn[i](h)
    return h


def _mid(c: int, groups: int, eps: float, layers: str) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(c, c, groups, eps)
    mid.attn_1 = AttnBlock(c, groups, eps, layers)
    mid.block_2 = ResnetBlock(c, c, groups, eps)
    return mid


def _run_mid(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, ch, mults, blocks, attn_res, res, z, groups, eps, layers):
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = ch
        for i, m in enumerate(mults):
            attention = []
            for _ in range(blocks):
                attention.append(res in attn_res)
                if layers == GANIME_TF and attention[-1]:  # its counter halves only here
                    res //= 2
            level = _level(cin, ch * m, attention, groups, eps, layers)
            cin = ch * m
            if i != len(mults) - 1:
                level.downsample = Resample(cin, True, layers)
                if layers == TAMING:
                    res //= 2
            self.down.append(level)
        self.mid = _mid(cin, groups, eps, layers)
        self.norm_out = nn.GroupNorm(groups, cin, eps=eps)
        self.conv_out = nn.Conv2d(cin, z, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = _run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = _run_mid(self.mid, h)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch, mults, blocks, attn_res, res, z, groups, eps, layers, output_tanh):
        super().__init__()
        self.output_tanh = output_tanh
        cin = ch * mults[-1]
        res //= 2 ** (len(mults) - 1)
        self.conv_in = nn.Conv2d(z, cin, 3, padding=1)
        self.mid = _mid(cin, groups, eps, layers)
        self.up = nn.ModuleList()
        for i in reversed(range(len(mults))):
            level = _level(cin, ch * mults[i], [res in attn_res] * (blocks + 1), groups, eps,
                           layers)
            cin = ch * mults[i]
            if i != 0:
                level.upsample = Resample(cin, False, layers)
                res *= 2
            self.up.insert(0, level)
        self.norm_out = nn.GroupNorm(groups, cin, eps=eps)
        self.conv_out = nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_mid(self.mid, self.conv_in(z))
        for level in reversed(self.up):
            h = _run_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        out = self.conv_out(nn.functional.silu(self.norm_out(h)))
        return torch.tanh(out) if self.output_tanh else out


class VQModel(nn.Module):
    """Arguments are our `config.model` fields of the same names; NCHW frames in [-1, 1]."""

    def __init__(self, *, channels: int, channel_multipliers: Sequence[int], num_res_blocks: int,
                 attention_resolutions: Sequence[int], resolution: int, z_channels: int,
                 embedding_dim: int, num_embeddings: int, norm_groups: int, norm_eps: float,
                 output_tanh: bool, layers: str = TAMING):
        super().__init__()
        args = (channels, tuple(channel_multipliers), num_res_blocks,
                tuple(attention_resolutions), resolution, z_channels, norm_groups, norm_eps,
                layers)
        self.encoder, self.decoder = Encoder(*args), Decoder(*args, output_tanh)
        self.quant_conv = nn.Conv2d(z_channels, embedding_dim, 1)
        self.post_quant_conv = nn.Conv2d(embedding_dim, z_channels, 1)
        self.quantize = nn.Module()
        self.quantize.embedding = nn.Embedding(num_embeddings, embedding_dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Frames (B, 3, H, W) -> token indices (B, h, w)."""
        z = self.quant_conv(self.encoder(x)).permute(0, 2, 3, 1)
        codes = self.quantize.embedding.weight
        return torch.cdist(z.reshape(-1, z.shape[-1]), codes).argmin(1).reshape(z.shape[:3])

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Token indices (B, h, w) -> frames (B, 3, H, W)."""
        quantized = self.quantize.embedding(indices).permute(0, 3, 1, 2)
        return self.decoder(self.post_quant_conv(quantized))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        indices = self.encode(x)
        return self.decode(indices), indices


def vqmodel_from_config(model_config, layers: str = TAMING) -> VQModel:
    """The reference of one of our stage-1 `config.model`s (random weights, eval mode)."""
    fields = ("channels", "channel_multipliers", "num_res_blocks", "attention_resolutions",
              "resolution", "z_channels", "embedding_dim", "num_embeddings", "norm_groups",
              "norm_eps", "output_tanh")
    return VQModel(**{f: model_config[f] for f in fields}, layers=layers).eval()


@torch.no_grad()
def port_generate(vq: VQModel, gpt: nn.Module, first: np.ndarray, last: np.ndarray,
                  num_frames: int, num_codes: int) -> np.ndarray:
    """TorchGANime's loop: frames (B, num_frames, H, W, 3) float32 from uint8 ends (B, H, W, 3).

    `gpt` is a `transformers.GPT2LMHeadModel` whose vocabulary holds the `num_codes` codes
    then one countdown token per number of frames left.
    """
    def to_unit(frames: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(frames.astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)

    last_tokens = vq.encode(to_unit(last)).flatten(1)
    previous = to_unit(first)
    frames = [previous]
    for t in range(1, num_frames - 1):
        previous_tokens = vq.encode(previous)
        countdown = torch.full((len(first), 1), num_codes + num_frames - 1 - t)
        context = torch.cat([countdown, last_tokens, previous_tokens.flatten(1)], dim=1)
        logits = gpt(input_ids=context).logits[:, -last_tokens.shape[1]:, :num_codes]
        previous = vq.decode(logits.argmax(-1).reshape(previous_tokens.shape))
        frames.append(previous)
    frames.append(to_unit(last))
    return torch.stack(frames, dim=1).permute(0, 1, 3, 4, 2).numpy()
