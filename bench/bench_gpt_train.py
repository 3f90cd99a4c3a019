"""Stage-2 training throughput of both layouts side by side: compiled train steps on random
token clips, printed as JSON.

    python bench/bench_gpt_train.py --config=demo          # window k=2, sequence k=2 and whole
    python bench/bench_gpt_train.py --config=kny --clips=1 --frames=8 --remat=nothing_saveable \
        --scan_layers --variants=window:5,sequence:5,sequence:0   # gpt2-medium
    python bench/bench_gpt_train.py --config=demo_gpu --phases=teacher --variants=sequence:3
        # the shipped anime GPT's step (raster order, teacher-forced only)

Each variant is `layout:n_frames_before[:frame_tokens]` (k 0 with the sequence layout: the whole
history; frame_tokens defaults to the config's, e.g. 512 for a 4x-downsampling tokenizer's
16x32 grid, 128 for the 8x16 grid). Steps
of the variants are interleaved (one of each in turn), so a noisy machine slows them alike.
Reports, per variant and phase (teacher forcing; own predictions: the model's own greedy frames
as context), the median step time, `target_tokens_per_sec` (tokens whose loss is computed:
clips x (frames - 2) x tokens per frame) and its ratio to the first variant's, and clips per
second (what compares variants of different frame sizes). Runs on the
default device, in float32 unless --dtype says otherwise.
"""
import argparse
import json
import os
import statistics
import sys
import time

import jax
import ml_collections
import numpy as np

# The repository root, for `configs` and `ganime_jax` when run as `python bench/...`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import gpt_demo, gpt_demo_gpu, gpt_kny  # noqa: E402
from cpu_info import cpu_name  # noqa: E402
from ganime_jax import mesh as mesh_lib  # noqa: E402
from ganime_jax.models.frame_sequence import WHOLE_HISTORY  # noqa: E402
from ganime_jax.train.gpt_task import GPTTask  # noqa: E402

CONFIGS = {"demo": gpt_demo, "demo_gpu": gpt_demo_gpu, "kny": gpt_kny}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="demo")
    parser.add_argument("--clips", type=int, default=0, help="clips per step (0: the config's)")
    parser.add_argument("--frames", type=int, default=0, help="frames per clip (0: the config's)")
    parser.add_argument("--accum", type=int, default=1, help="gradient accumulation steps")
    parser.add_argument("--dtype", default="float32", help="compute dtype")
    parser.add_argument("--remat", default="", help="remat policy ('' = off)")
    parser.add_argument("--scan_layers", action="store_true",
                        help="scan over layers (on CPU remat saves memory only with it)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per phase")
    parser.add_argument("--phases", default="teacher,own")
    parser.add_argument("--variants", default="",
                        help="comma-separated layout:n_frames_before[:frame_tokens] ('' = the "
                             "config's window k, the sequence layout at that k and with the whole "
                             "history)")
    return parser.parse_args(argv)


def variants(args: argparse.Namespace,
             config: ml_collections.ConfigDict) -> list[tuple[str, int, int]]:
    """(layout, n_frames_before, frame_tokens) of each variant."""
    tokens = config.model.frame_tokens
    if args.variants:
        specs = [v.split(":") for v in args.variants.split(",")]
        return [(s[0], int(s[1]), int(s[2]) if len(s) > 2 else tokens) for s in specs]
    k = config.model.n_frames_before
    return [("window", k, tokens), ("sequence", k, tokens), ("sequence", WHOLE_HISTORY, tokens)]


def bench_config(args: argparse.Namespace) -> ml_collections.ConfigDict:
    config = CONFIGS[args.config].get_config()
    config.tokenizer.workdir = "unused"
    config.train.batch_size = args.clips or config.train.batch_size
    config.data.max_frames = args.frames or config.data.max_frames
    config.data.min_frames = min(config.data.min_frames, config.data.max_frames)
    config.optimizer.grad_accum_steps = args.accum
    config.model.gpt.update(dtype=args.dtype, remat=args.remat, attn_pdrop=0.0,
                            scan_layers=args.scan_layers)
    return config


def variant_config(config: ml_collections.ConfigDict, layout: str, k: int,
                   frame_tokens: int) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.layout = layout
    config.model.n_frames_before = k
    config.model.frame_tokens = frame_tokens
    context = (k + 1) * frame_tokens if layout == "window" else frame_tokens
    config.model.gpt.n_positions = max(config.model.gpt.n_positions, context)
    return config


def timed_step(task: GPTTask, state, batch: dict, step: int, key: int):
    start = time.perf_counter()
    state, metrics = task.train_step(state, batch, jax.random.key(key), step)
    jax.block_until_ready(metrics)
    return state, time.perf_counter() - start, float(metrics["loss"])


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    config = bench_config(args)
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1}),
                              jax.devices()[:1])
    clips, frames = config.train.batch_size, config.data.max_frames
    rng = np.random.default_rng(0)
    runs = {}
    for layout, k, hw in variants(args, config):
        task = GPTTask(variant_config(config, layout, k, hw), mesh)
        tokens = rng.integers(0, config.model.gpt.vocab_size, (clips, frames, hw), dtype=np.int32)
        batch = {"tokens": tokens, "n_frames": np.full((clips,), frames, np.int32)}
        batch = {key: jax.device_put(value, task.batch_shardings[key])
                 for key, value in batch.items()}
        state = task.init_state(jax.random.key(0))
        runs[f"{layout}:k={k}:tokens={hw}"] = {"task": task, "state": state, "batch": batch,
                                               "targets": clips * (frames - 2) * hw}
    result = {"config": args.config, "device": str(jax.devices()[0].device_kind),
              "cpu": cpu_name(), "clips": clips, "frames": frames,
              "dtype": args.dtype, "remat": args.remat, "scan_layers": args.scan_layers,
              "grad_accum_steps": args.accum,
              "variants": {}}
    phase_steps = {"teacher": 0, "own": config.train.stop_ground_truth_after_step}
    for phase in args.phases.split(","):
        times: dict[str, list[float]] = {name: [] for name in runs}
        for round_index in range(args.steps + 1):  # round 0 compiles
            for name, run in runs.items():
                run["state"], seconds, run["loss"] = timed_step(
                    run["task"], run["state"], run["batch"], phase_steps[phase], round_index)
                if round_index:
                    times[name].append(seconds)
                else:
                    run.setdefault("compile", {})[phase] = seconds
        reference = None
        for name, run in runs.items():
            median = statistics.median(times[name])
            rate = run["targets"] / median
            reference = reference or rate
            entry = result["variants"].setdefault(name, {
                "params": int(sum(x.size for x in jax.tree.leaves(run["state"].params)))})
            entry[phase] = {
                "compile_and_first_step_s": round(run["compile"][phase], 3),
                "step_s_median": round(median, 4),
                "step_s_all": [round(t, 4) for t in times[name]],
                "target_tokens_per_sec": round(rate, 1),
                "clips_per_sec": round(clips / median, 4),
                "vs_first_variant": round(rate / reference, 2), "loss": run["loss"]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
