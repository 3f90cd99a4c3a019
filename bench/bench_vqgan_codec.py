"""Times the reference VQ-GAN's jitted encode (frames -> tokens) and decode (tokens -> frames);
prints JSON. Random weights (speed does not depend on them); compile time is reported apart.

    .venv/bin/python bench/bench_vqgan_codec.py [--batch 8 --height 64 --width 128 --iters 7]

The load average is printed too: other processes on the machine slow the numbers down.
"""
import argparse
import json
import os
import sys
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import timing  # noqa: E402
from ganime_jax.models.vqgan import VQGAN  # noqa: E402


def _time(fn: Callable[[], jax.Array], iters: int, batch: int) -> dict[str, float]:
    times = timing.timed(fn, iters)
    return {**times, "frames_per_s": round(batch / times["median_s"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--iters", type=int, default=7)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    model = VQGAN(dtype=args.dtype)
    frames = jnp.asarray(np.random.default_rng(0).uniform(
        -1, 1, (args.batch, args.height, args.width, 3)), jnp.float32)
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), frames)
    encode = jax.jit(lambda v, x: model.apply(v, x, method=VQGAN.encode)[0])
    decode = jax.jit(lambda v, i: model.apply(v, i, method=VQGAN.decode))
    indices = encode(variables, frames)
    load_before = os.getloadavg()[0]
    result = {
        "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
        "batch": args.batch, "frame": [args.height, args.width], "dtype": args.dtype,
        "tokens": list(indices.shape[1:]),
        "encode": _time(lambda: encode(variables, frames), args.iters, args.batch),
        "decode": _time(lambda: decode(variables, indices), args.iters, args.batch),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
