"""The decoder's layers one by one, ours (XLA:CPU) against PyTorch, at batch 8; JSON lines.

    .venv/bin/python bench/bench_decoder_layers.py [--batch 8] [--repeats 7]

Per level of the reference decoder (64x128x64, 32x64x128, 16x32x256, 8x16x256; H x W x
channels): a 3x3 "same" convolution, as `lax.conv_general_dilated` (NHWC, what our layers
use) and as three rewrites of it (im2col then one matmul; nine shifted matmuls summed; the
three horizontal taps folded into channels, then a 3x1 conv), against `torch.nn.Conv2d` on
NCHW (the port's layout) and on channels-last tensors; and GroupNorm + swish, ours
(`layers.GroupNorm`) against `torch.nn.GroupNorm` + silu. Median milliseconds of `--repeats`
calls after a warm-up; each rewrite's largest difference from the lax conv is reported too.
"""
import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import timing  # noqa: E402
from bench.cpu_info import cpu_description  # noqa: E402
from ganime_jax.models.layers import GroupNorm  # noqa: E402

LEVELS = ((64, 128, 64), (32, 64, 128), (16, 32, 256), (8, 16, 256))
NORM_GROUPS, NORM_EPS = 32, 1e-6


def milliseconds(fn: Callable[[], Any], repeats: int) -> float:
    return round(timing.timed(fn, repeats)["median_s"] * 1e3, 2)


def conv_lax(x: jax.Array, k: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _shifted(x: jax.Array) -> list[jax.Array]:
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    height, width = x.shape[1:3]
    return [padded[:, i:i + height, j:j + width] for i in range(3) for j in range(3)]


def conv_im2col(x: jax.Array, k: jax.Array) -> jax.Array:
    columns = jnp.concatenate(_shifted(x), axis=-1)
    return jnp.einsum("bhwk,ko->bhwo", columns, k.reshape(-1, k.shape[-1]))


def conv_taps(x: jax.Array, k: jax.Array) -> jax.Array:
    return sum(jnp.einsum("bhwc,co->bhwo", s, k[i // 3, i % 3])
               for i, s in enumerate(_shifted(x)))


def conv_rows(x: jax.Array, k: jax.Array) -> jax.Array:
    padded = jnp.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)))
    width = x.shape[2]
    columns = jnp.concatenate([padded[:, :, j:j + width] for j in range(3)], axis=-1)
    kernel = k.reshape(3, 1, 3 * k.shape[2], k.shape[3])
    return jax.lax.conv_general_dilated(columns, kernel, (1, 1), ((1, 1), (0, 0)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


REWRITES = {"im2col": conv_im2col, "taps": conv_taps, "rows": conv_rows}


def bench_level(batch: int, height: int, width: int, channels: int, repeats: int
                ) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, height, width, channels)).astype(np.float32)
    k = (rng.normal(size=(3, 3, channels, channels)) * 0.05).astype(np.float32)
    xj, kj = jnp.asarray(x), jnp.asarray(k)
    lax_conv = jax.jit(conv_lax)
    reference = lax_conv(xj, kj)
    result = {"shape": [height, width, channels],
              "conv_ours_ms": milliseconds(lambda: lax_conv(xj, kj).block_until_ready(),
                                           repeats)}
    for name, rewrite in REWRITES.items():
        fn = jax.jit(rewrite)
        result[f"conv_{name}_ms"] = milliseconds(lambda: fn(xj, kj).block_until_ready(), repeats)
        result[f"conv_{name}_max_diff"] = float(jnp.abs(fn(xj, kj) - reference).max())
    norm = GroupNorm(NORM_GROUPS, NORM_EPS)
    norm_params = norm.init(jax.random.key(0), xj)
    norm_swish = jax.jit(lambda p, a: jax.nn.swish(norm.apply(p, a)))
    result["norm_swish_ours_ms"] = milliseconds(
        lambda: norm_swish(norm_params, xj).block_until_ready(), repeats)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    xt_last = xt.contiguous(memory_format=torch.channels_last)
    conv_t = torch.nn.Conv2d(channels, channels, 3, padding=1).eval()
    norm_t = torch.nn.GroupNorm(NORM_GROUPS, channels, eps=NORM_EPS)
    with torch.no_grad():
        result["conv_torch_nchw_ms"] = milliseconds(lambda: conv_t(xt), repeats)
        result["conv_torch_channels_last_ms"] = milliseconds(lambda: conv_t(xt_last), repeats)
        result["norm_swish_torch_ms"] = milliseconds(
            lambda: torch.nn.functional.silu(norm_t(xt)), repeats)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())
    print(json.dumps({"cpu": cpu_description(), "batch": args.batch,
                      "torch_threads": torch.get_num_threads(),
                      "xla_flags": os.environ.get("XLA_FLAGS", "")}), flush=True)
    for height, width, channels in LEVELS:
        print(json.dumps(bench_level(args.batch, height, width, channels, args.repeats)),
              flush=True)
    print(json.dumps({"load_average_1min": round(os.getloadavg()[0], 2)}), flush=True)


if __name__ == "__main__":
    main()
