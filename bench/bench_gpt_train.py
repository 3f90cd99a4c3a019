"""Stage-2 training throughput: compiled train steps on random token clips, printed as JSON.

    python bench/bench_gpt_train.py --config=demo                     # configs/gpt_demo.py
    python bench/bench_gpt_train.py --config=kny --clips=1 --frames=3 # gpt2-medium, 1 sequence

Reports, per phase (teacher forcing: one batched forward over all frames; own predictions:
the lax.scan over frames), the median step time and two rates: `target_tokens_per_sec` (tokens
whose loss is computed: clips x (frames - 2) x tokens per frame) and `sequence_tokens_per_sec`
(all tokens the transformer runs on: target frames x (n_frames_before + 1) x tokens per frame).
Runs on the default device, in float32 unless --dtype says otherwise.
"""
import argparse
import json
import statistics
import sys
import time

import jax
import ml_collections
import numpy as np

from configs import gpt_demo, gpt_kny
from ganime_jax.train import mesh as mesh_lib
from ganime_jax.train.gpt_task import GPTTask

CONFIGS = {"demo": gpt_demo, "kny": gpt_kny}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="demo")
    parser.add_argument("--clips", type=int, default=0, help="clips per step (0: the config's)")
    parser.add_argument("--frames", type=int, default=0, help="frames per clip (0: the config's)")
    parser.add_argument("--accum", type=int, default=1, help="gradient accumulation steps")
    parser.add_argument("--dtype", default="float32", help="compute dtype")
    parser.add_argument("--remat", default="", help="remat policy ('' = off)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per phase")
    parser.add_argument("--phases", default="teacher,own")
    return parser.parse_args(argv)


def bench_config(args: argparse.Namespace) -> ml_collections.ConfigDict:
    config = CONFIGS[args.config].get_config()
    config.tokenizer.workdir = "unused"
    config.train.batch_size = args.clips or config.train.batch_size
    config.data.max_frames = args.frames or config.data.max_frames
    config.data.min_frames = min(config.data.min_frames, config.data.max_frames)
    config.optimizer.grad_accum_steps = args.accum
    config.model.gpt.update(dtype=args.dtype, remat=args.remat)
    return config


def time_phase(task: GPTTask, state, batch: dict, step: int, num_steps: int):
    """Compile seconds (first call) and the steady step times of one phase."""
    start = time.perf_counter()
    state, metrics = task.train_step(state, batch, jax.random.key(0), step)
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - start
    times = []
    for i in range(num_steps):
        start = time.perf_counter()
        state, metrics = task.train_step(state, batch, jax.random.key(i + 1), step)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return state, compile_seconds, times, float(metrics["loss"])


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    config = bench_config(args)
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1}),
                              jax.devices()[:1])
    task = GPTTask(config, mesh)
    state = task.init_state(jax.random.key(0))
    clips, frames = config.train.batch_size, config.data.max_frames
    hw, k = config.model.frame_tokens, config.model.n_frames_before
    rng = np.random.default_rng(0)
    batch = {"tokens": rng.integers(0, config.model.gpt.vocab_size, (clips, frames, hw),
                                    dtype=np.int32),
             "n_frames": np.full((clips,), frames, np.int32)}
    batch = {key: jax.device_put(value, task.batch_shardings[key]) for key, value in batch.items()}
    targets = clips * (frames - 2) * hw
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    result = {"config": args.config, "device": str(jax.devices()[0].device_kind),
              "params": int(num_params), "clips": clips, "frames": frames, "frame_tokens": hw,
              "n_frames_before": k, "dtype": args.dtype, "remat": args.remat,
              "grad_accum_steps": args.accum, "phases": {}}
    phase_steps = {"teacher": 0, "own": config.train.stop_ground_truth_after_step}
    for phase in args.phases.split(","):
        state, compile_seconds, times, loss = time_phase(task, state, batch, phase_steps[phase],
                                                         args.steps)
        median = statistics.median(times)
        result["phases"][phase] = {
            "compile_and_first_step_s": round(compile_seconds, 3),
            "step_s_median": round(median, 4), "step_s_all": [round(t, 4) for t in times],
            "target_tokens_per_sec": round(targets / median, 1),
            "sequence_tokens_per_sec": round(targets * (k + 1) / median, 1),
            "loss": loss}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
