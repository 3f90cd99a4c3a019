"""Times the VQ-GAN train step of a config (default: the reference kny architecture); prints JSON.

    .venv/bin/python bench/bench_vqgan_train.py [--config configs/vqgan_kny.py --batch 8]

Three variants of one jit-compiled step at the same shapes: the autoencoder step without the
perceptual loss, with LPIPS (the phase before `disc_start`), and the full GAN step (LPIPS +
discriminator + adaptive weight). Random data and weights: speed does not depend on them.
Peak memory: XLA's buffer estimate of each compiled step and the process's peak RSS.
"""
import argparse
import importlib.util
import json
import os
import resource
import statistics
import sys
import time

import jax
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ganime_jax import mesh as mesh_lib  # noqa: E402
from ganime_jax.losses.perceptual import load_lpips_params  # noqa: E402
from ganime_jax.train.vqgan_task import VQGANTask, compile_train_step  # noqa: E402


def _load_config(path: str) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _time_variant(config, frames, lpips_params, use_disc: bool, iters: int) -> dict:
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1}))
    task = VQGANTask(config, mesh)
    state = task.init_state(jax.random.key(0))
    step = compile_train_step(task.fns, config, mesh, task.state_shardings, use_disc)
    batch = {"frames": jax.device_put(frames, mesh_lib.batch_sharding(mesh))}
    lpips = jax.device_put(lpips_params, mesh_lib.replicated(mesh))
    start = time.perf_counter()
    compiled = step.lower(state, batch, jax.random.key(0), lpips).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    state, metrics = compiled(state, batch, jax.random.key(0), lpips)
    jax.block_until_ready(metrics)
    times = []
    for i in range(iters):
        start = time.perf_counter()
        state, metrics = compiled(state, batch, jax.random.key(i), lpips)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"median_s": round(median, 3), "min_s": round(min(times), 3),
            "images_per_s": round(frames.shape[0] / median, 2),
            "compile_s": round(compile_s, 1),
            "xla_temp_mib": round(memory.temp_size_in_bytes / 2**20, 1) if memory else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/vqgan_kny.py")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()
    config = _load_config(args.config)
    frames = np.random.default_rng(0).integers(
        0, 256, (args.batch, config.data.height, config.data.width, 3), dtype=np.uint8)
    lpips_params = load_lpips_params()
    no_perceptual = ml_collections.ConfigDict(config.to_dict())
    no_perceptual.loss.perceptual_weight = 0.0
    load_before = os.getloadavg()[0]
    result = {
        "config": args.config, "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
        "batch": args.batch, "frame": [config.data.height, config.data.width],
        "dtype": config.model.dtype,
        "autoencoder_no_lpips": _time_variant(no_perceptual, frames, lpips_params, False,
                                              args.iters),
        "autoencoder_lpips": _time_variant(config, frames, lpips_params, False, args.iters),
        "gan_lpips_disc": _time_variant(config, frames, lpips_params, True, args.iters),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
