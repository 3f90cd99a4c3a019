"""`--mode=eval` wall time per 100 clips, split into generation / baselines / metrics / I3D; JSON.

    .venv/bin/python bench/bench_eval.py [--config=configs/gpt_demo.py] [--workdir=DIR]
        [--tokenizer_config=configs/vqgan_demo.py] [--num_clips=8] [--seeds 0 1 2] [--no-fvd]

With --workdir: the trained tokenizer and transformer and the held-out clips of the config, as
`--mode=eval` loads them. Without: random weights for the config's transformer and for the
VQ-GAN of --tokenizer_config (its stage-1 config), and random clips; speed does not depend on
either. Everything else is the config's `evaluate` section (--num_clips and --seeds override
it). `evaluation.run.evaluate` runs once on one seed to compile every shape, then is timed
twice on all seeds, with the on-disk cache of `--mode=eval` in a fresh folder: "cold" (nothing
cached: the first eval on a test set) and "new_model" (the true clips and the baselines cached,
the transformer's weights changed by 1 %: what evaluating each new model costs). Stage times
are scaled linearly to 100 clips.
"""
import argparse
import dataclasses
import json
import os
import pathlib
import sys
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cpu_info import cpu_name  # noqa: E402
from bench_vqgan_train import _load_config  # noqa: E402
from ganime_jax import sample  # noqa: E402
from ganime_jax.evaluation import run  # noqa: E402
from ganime_jax.evaluation.set_cache import SetCache  # noqa: E402
from ganime_jax.models.frame_layouts import example_inputs  # noqa: E402
from ganime_jax.models.vqgan import VQGAN  # noqa: E402
from ganime_jax.tokenizer import Tokenizer  # noqa: E402
from ganime_jax.train.gpt_task import build_model  # noqa: E402

EVAL_CLIPS = 100  # the extrapolation unit


def random_generator(config, tokenizer_config) -> sample.Generator:
    """Randomly initialised tokenizer (from a stage-1 config) and transformer."""
    vqgan = VQGAN(**tokenizer_config.model)
    data = tokenizer_config.data
    frames = jnp.zeros((1, data.height, data.width, tokenizer_config.model.in_channels))
    tokenizer = Tokenizer(config=tokenizer_config, model=vqgan, step=0,
                          params=jax.jit(vqgan.init)(jax.random.key(0), frames)["params"],
                          workdir=pathlib.Path("."))
    transformer = build_model(config.model)
    params = jax.jit(transformer.init)(jax.random.key(1),
                                       *example_inputs(transformer))["params"]
    return sample.Generator(tokenizer, transformer, nn.unbox(params), step=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/gpt_demo.py")
    parser.add_argument("--workdir", default="", help="a trained stage-2 run (default: random)")
    parser.add_argument("--tokenizer_config", default="configs/vqgan_demo.py",
                        help="the stage-1 config of the random tokenizer (without --workdir)")
    parser.add_argument("--num_clips", type=int, default=8, help="clips measured")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="default: config.evaluate.seeds")
    parser.add_argument("--no-fvd", dest="fvd", action="store_false")
    args = parser.parse_args()

    config = _load_config(args.config)
    config.evaluate.update(num_clips=args.num_clips, fvd=args.fvd)
    if args.seeds is not None:
        config.evaluate.seeds = tuple(args.seeds)
    settings = run.settings_from_config(config)
    if args.workdir:
        generator = sample.load_generator(config, args.workdir)
        truth = run.heldout_truth(config, settings)
    else:
        generator = random_generator(config, _load_config(args.tokenizer_config))
        shape = (settings.num_clips, settings.num_frames, *generator.tokenizer.frame_shape)
        truth = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)

    warm_up = dataclasses.replace(settings, seeds=settings.seeds[:1])
    run.evaluate(generator.tokenizer, generator, truth, warm_up)
    scale = EVAL_CLIPS / len(truth)
    passes = {}
    with tempfile.TemporaryDirectory() as folder:
        cache = SetCache.for_truth(folder, truth, settings.ssim_gaussian)
        # cold: nothing cached; new_model: the cache of that run, and a transformer whose
        # weights differ by 1 %, as a retrained model evaluated on the same test set.
        retrained = dataclasses.replace(
            generator, params=jax.tree.map(lambda p: p * 1.01, generator.params))
        for name, model in (("cold", generator), ("new_model", retrained)):
            runs, timings = run.evaluate(model.tokenizer, model, truth, settings, cache)
            per_100 = {stage: round(seconds * scale, 1) for stage, seconds in timings.items()}
            per_100["total"] = round(sum(timings.values()) * scale, 1)
            passes[name] = {"measured_s": {k: round(v, 2) for k, v in timings.items()},
                            f"per_{EVAL_CLIPS}_clips_s": per_100}
    print(json.dumps({
        "config": args.config, "weights": args.workdir or "random",
        "num_clips_measured": len(truth), "num_frames": settings.num_frames,
        "frame_shape": list(generator.tokenizer.frame_shape),
        "seeds_run": len(runs[run.MODEL]), "sampling": settings.sampling(),
        "batch_size": settings.batch_size, "fvd": settings.fvd,
        "backend": jax.default_backend(), "device": str(jax.devices()[0]),
        "cpu": cpu_name(), "cpu_count": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2), **passes}, indent=1))


if __name__ == "__main__":
    main()
