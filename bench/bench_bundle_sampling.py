"""Token sampling of the shipped bundles: seconds per clip's in-between tokens; JSON.

    .venv/bin/python bench/bench_bundle_sampling.py [--bundles demo moving_mnist]
        [--batches 1 16] [--repeats 3]

`generation.generate_tokens` with each bundle's transformer, trained weights and sampling
method (top-k, k from its config) on random end tokens, for each batch size; the clips have the
bundle's `sample.num_frames`. No decode (its speed is the tokenizer's: `bench_decode_batch.py`).
The batch sizes of one bundle take turns (median of `--repeats` rounds after one compiling
call each). To compare two versions of the code, run this from each checkout in turn.
"""
import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.cpu_info import cpu_description  # noqa: E402
from bench.timing import interleaved  # noqa: E402
from ganime_jax import bundle, generation, sample  # noqa: E402

BUNDLES = {"demo": bundle.DEMO_BUNDLE,
           "moving_mnist": os.path.join(os.path.dirname(bundle.DEMO_BUNDLE), "moving_mnist")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", nargs="+", choices=sorted(BUNDLES),
                        default=["demo", "moving_mnist"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    load = os.getloadavg()[0]
    rng = np.random.default_rng(0)
    results = []
    for name in args.bundles:
        run = bundle.load_sample_run(BUNDLES[name])
        generator = sample.load_generator(run.config, run.workdir)
        transformer, settings = generator.transformer, run.config.sample
        fns = {}
        for batch in args.batches:
            ends = jnp.asarray(rng.integers(0, transformer.gpt.vocab_size,
                                            (2, batch, transformer.frame_tokens)), jnp.int32)
            fns[str(batch)] = (lambda ends=ends: generation.generate_tokens(
                transformer, generator.params, ends[0], ends[1], settings.num_frames,
                jax.random.key(0), method=settings.method, temperature=settings.temperature,
                top_k=settings.top_k, top_p=settings.top_p))
        timings = interleaved(fns, args.repeats)
        results.append({"bundle": name, "num_frames": settings.num_frames,
                        "seconds_per_clip": {b: round(t["median_s"] / int(b), 4)
                                             for b, t in timings.items()},
                        "seconds_per_call": {b: t["median_s"] for b, t in timings.items()}})
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"cpu": cpu_description(), "jax": jax.__version__, "results": results,
                      "load_average_1min": [round(load, 2), round(os.getloadavg()[0], 2)]},
                     indent=1))


if __name__ == "__main__":
    main()
