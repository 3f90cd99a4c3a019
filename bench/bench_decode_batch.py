"""Decoding generated tokens in calls of k frames: seconds per frame for each k; JSON.

    .venv/bin/python bench/bench_decode_batch.py [--config configs/vqgan_torchganime.py]
        [--frames 14 112] [--sizes 1 2 4 7 8 14 0] [--repeats 5]

`generation.decode_in_batches` on random tokens with a randomly initialised VQ-GAN of the
config (speed does not depend on the weights), for each total frame count and call size k
(0: every frame in one call). The sizes of one frame count take turns (median of `--repeats`
rounds after one compiling call each), so their ratios are taken under the same load. This is
how `generation.CPU_DECODE_BATCH_SIZE` is chosen (README, "Speed against the PyTorch
reference").
"""
import argparse
import json
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.bench_vqgan_train import _load_config  # noqa: E402
from bench.cpu_info import cpu_description  # noqa: E402
from bench.timing import interleaved  # noqa: E402
from ganime_jax import generation  # noqa: E402
from ganime_jax.models.vqgan import VQGAN  # noqa: E402
from ganime_jax.tokenizer import Tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/vqgan_torchganime.py")
    parser.add_argument("--frames", nargs="+", type=int, default=[14, 112])
    parser.add_argument("--sizes", nargs="+", type=int, default=[1, 2, 4, 7, 8, 14, 0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    config = _load_config(args.config)
    model = VQGAN(**config.model)
    shape = (1, config.data.height, config.data.width, 3)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros(shape))["params"]
    tokenizer = Tokenizer(config=config, model=model, params=params, step=0,
                          workdir=pathlib.Path("."))
    load = os.getloadavg()[0]
    rng = np.random.default_rng(0)
    results = []
    for count in args.frames:
        tokens = jnp.asarray(rng.integers(0, config.model.num_embeddings,
                                          (count, tokenizer.frame_tokens)), jnp.int32)
        fns = {str(k): (lambda k=k: generation.decode_in_batches(tokenizer, tokens, k or None))
               for k in args.sizes if k <= count}
        seconds = {k: t["median_s"] for k, t in interleaved(fns, args.repeats).items()}
        results.append({"frames": count, "seconds": seconds,
                        "ms_per_frame": {k: round(1e3 * s / count, 1)
                                         for k, s in seconds.items()}})
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"cpu": cpu_description(), "config": args.config, "jax": jax.__version__,
                      "results": results,
                      "load_average_1min": [round(load, 2), round(os.getloadavg()[0], 2)]},
                     indent=1))


if __name__ == "__main__":
    main()
