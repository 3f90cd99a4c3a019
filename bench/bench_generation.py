"""Generation speed: seconds per 16-frame 64x128 video from its first and last frame; JSON.

    .venv/bin/python bench/bench_generation.py [--models mini gpt2-medium] [--batches 1 8]
        [--repeats 3] [--n_frames_before 1] [--paths prefix full] [--no-baseline]

Tokenizer: the reference VQ-GAN (`configs/vqgan_kny.py`, 1024 codes, 8x16 tokens per frame);
transformers: the `mini` preset (256 wide, 4 layers) and `gpt2-medium`, both with the
tokenizer's 1024-token vocabulary; random weights (speed does not depend on them).
`n_frames_before=1` gives the PyTorch port's context (last frame + current frame: 256 tokens
plus its countdown token). Paths: `prefix` (window layout, countdown_on_last_frame=False: the
last frame's keys/values computed once per clip), `full` (the reference's countdown on every
position: the whole sequence every step), `sequence` (the sequence layout with the same
window: one frame's block per step against a ring cache), and, with the whole history as
context, `prefix_history` (the window layout with k = 14: every earlier frame recomputed every
step) against `sequence_history` (the sequence layout: each frame computed once, cached).
Each measurement is `generation.generate_frames` end to end (encode the two ends, scan over
the 14 in-between frames, decode them), timed after one
compiling call; `decode_seconds` times the decode of the 14 x batch frames on its own (in
calls of `generation.default_decode_batch_size()` frames, as generation does).

The `baseline` entry (batch 1) times the PyTorch port's procedure written with the same
jitted pieces: per frame, encode the previous frame, one transformer forward pass on the full
sequence, argmax, decode. All measurements of one batch size take turns (median of
`--repeats` rounds), so their ratios are taken under the same load; the load average is
reported, as other processes slow every figure down. `--repeats 0` times each path once, less
the lowering and compilation that `jax.monitoring` reports during that call (for paths that
run for many minutes; tracing and first-call costs stay in, about a second more than a
repeated call on the mini preset).
"""
import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import vqgan_kny  # noqa: E402
from ganime_jax import conditioning, generation  # noqa: E402
from ganime_jax.models.frame_layouts import Transformer, example_inputs  # noqa: E402
from ganime_jax.models.frame_sequence import (WHOLE_HISTORY,  # noqa: E402
                                              FrameSequenceTransformer)
from ganime_jax.models.ganime_transformer import GANimeTransformer  # noqa: E402
from ganime_jax.models.gpt import GPT2Config, gpt_preset  # noqa: E402
from ganime_jax.models.vqgan import VQGAN  # noqa: E402
from ganime_jax.tokenizer import Tokenizer  # noqa: E402

NUM_FRAMES = 16
BASELINE = "baseline (port procedure)"
PATHS = ("prefix", "full", "sequence", "prefix_history", "sequence_history")


def _load() -> float:
    return round(os.getloadavg()[0], 2)


# XLA lowering and compilation, as reported by `jax.monitoring` (tracing is left in the run:
# nested jits report their tracing inside their caller's).
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


class _CompileClock:
    """Seconds JAX spent lowering and compiling since `reset`, while the `with` block runs."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> "_CompileClock":
        jax.monitoring.register_event_duration_secs_listener(self._record)
        return self

    def __exit__(self, *_: Any) -> None:
        jax.monitoring.unregister_event_duration_listener(self._record)

    def _record(self, event: str, seconds: float, **_: Any) -> None:
        if event in COMPILE_EVENTS:
            self.seconds += seconds

    def reset(self) -> None:
        self.seconds = 0.0


def interleaved_seconds(fns: dict[str, Callable[[], Any]], repeats: int
                         ) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """(first call, compilation within it, run time) of each function, in seconds.

    The run time is the median of `repeats` further calls, which take turns so that all see
    the same load; with `repeats=0` (for paths that run for many minutes) it is the first
    call less its compilation.
    """
    first, compile_seconds, times = {}, {}, {name: [] for name in fns}
    with _CompileClock() as clock:
        for name, fn in fns.items():
            clock.reset()
            start = time.perf_counter()
            jax.block_until_ready(fn())
            first[name] = time.perf_counter() - start
            compile_seconds[name] = clock.seconds
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    run = {name: statistics.median(t) if t else first[name] - compile_seconds[name]
           for name, t in times.items()}
    return first, compile_seconds, run


def make_tokenizer() -> Tokenizer:
    config = vqgan_kny.get_config()
    model = VQGAN(**config.model)
    frames = jnp.zeros((1, config.data.height, config.data.width, 3))
    params = jax.jit(model.init)(jax.random.key(0), frames)["params"]
    return Tokenizer(config=config, model=model, params=params, step=0,
                     workdir=pathlib.Path("."))


def make_transformer(preset: str, vocab: int, frame_tokens: int, n_frames_before: int,
                     path: str) -> tuple[Transformer, Any]:
    """The transformer a generation path runs (see the module docstring), random weights."""
    gpt = GPT2Config(**{**gpt_preset(preset), "vocab_size": vocab, "attn_pdrop": 0.0})
    if path.startswith("sequence"):
        window = WHOLE_HISTORY if path == "sequence_history" else n_frames_before
        model = FrameSequenceTransformer(gpt=gpt, frame_tokens=frame_tokens,
                                         n_frames_before=window, max_frames=NUM_FRAMES)
    else:
        k = NUM_FRAMES - 2 if path == "prefix_history" else n_frames_before
        # The whole history (15 x 128 tokens) exceeds GPT-2's 1,024 learned positions.
        gpt = dataclasses.replace(gpt, n_positions=max(gpt.n_positions, (k + 1) * frame_tokens))
        model = GANimeTransformer(gpt=gpt, frame_tokens=frame_tokens, n_frames_before=k,
                                  max_frames=NUM_FRAMES, countdown_on_last_frame=path == "full")
    params = jax.jit(model.init)(jax.random.key(1), *example_inputs(model))["params"]
    return model, jax.tree.map(jnp.asarray, params)


def port_procedure(tokenizer: Tokenizer, model: GANimeTransformer, params: Any,
                   first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """The port's loop: per frame encode, forward on the full sequence, argmax, decode."""
    forward = _port_forward(model)
    last_tokens = tokenizer.encode(last)
    frames, previous = [first], first
    for t in conditioning.target_frames(NUM_FRAMES):
        context = jnp.repeat(tokenizer.encode(previous)[:, None], model.n_frames_before, 1)
        remaining = jnp.full((len(first),), conditioning.remaining_frames(int(t), NUM_FRAMES))
        previous = np.asarray(tokenizer.decode(forward(params, last_tokens, context, remaining)))
        frames.append(previous)
    return np.stack(frames + [last], axis=1)


_PORT_FORWARDS: dict[GANimeTransformer, Callable] = {}


def _port_forward(model: GANimeTransformer) -> Callable:
    if model not in _PORT_FORWARDS:
        _PORT_FORWARDS[model] = jax.jit(lambda p, last, context, remaining: jnp.argmax(
            model.apply({"params": p}, last, context, remaining), -1).astype(jnp.int32))
    return _PORT_FORWARDS[model]


def bench_model(tokenizer: Tokenizer, preset: str, args: argparse.Namespace) -> list[dict]:
    models = {path: make_transformer(preset, tokenizer.num_embeddings, tokenizer.frame_tokens,
                                     args.n_frames_before, path)
              for path in args.paths}
    decode_batch = generation.default_decode_batch_size()
    rng = np.random.default_rng(0)
    results = []
    for batch in args.batches:
        first, last = (rng.integers(0, 256, (batch, *tokenizer.frame_shape), dtype=np.uint8)
                       for _ in range(2))
        tokens = jnp.zeros((batch * (NUM_FRAMES - 2), tokenizer.frame_tokens), jnp.int32)
        fns = {path: (lambda model=model, params=params: generation.generate_frames(
            tokenizer, model, params, first, last, NUM_FRAMES, jax.random.key(0),
            decode_batch_size=decode_batch)) for path, (model, params) in models.items()}
        fns["decode"] = lambda: generation.decode_in_batches(tokenizer, tokens, decode_batch)
        if args.baseline and batch == 1 and "full" in models:
            model, params = models["full"]
            fns[BASELINE] = lambda: port_procedure(tokenizer, model, params, first, last)
        load = _load()
        first_calls, compile_seconds, medians = interleaved_seconds(fns, args.repeats)
        loads = [load, _load()]
        decode = medians.pop("decode")
        for path, seconds in medians.items():
            entry = {"model": preset, "path": path, "batch": batch,
                     "seconds_per_call": round(seconds, 3),
                     "seconds_per_video": round(seconds / batch, 3)}
            if path != BASELINE:
                entry.update(decode_seconds=round(decode, 3),
                             decode_share=round(decode / seconds, 3),
                             first_call_seconds=round(first_calls[path], 2),
                             compile_seconds=round(compile_seconds[path], 2),
                             timed_calls=args.repeats or "first call less compilation")
            results.append({**entry, "load_average_1min": loads})
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return results


def summary(results: list[dict]) -> dict[str, dict]:
    """Per model, the fastest path at batch 1 and its speed-up over the port's procedure
    written with our pieces (`baseline`), both from this run. The PyTorch reference itself
    is timed by bench/bench_vs_torch.py."""
    out = {}
    for preset in sorted({r["model"] for r in results}):
        ours = [r for r in results if r["model"] == preset and r["batch"] == 1
                and r["path"] != BASELINE]
        if not ours:
            continue
        best = min(ours, key=lambda r: r["seconds_per_video"])
        entry = {"path": best["path"], "seconds_per_video": best["seconds_per_video"]}
        baseline = [r for r in results if r["model"] == preset and r["path"] == BASELINE]
        if baseline:
            entry["speedup_vs_baseline_same_load"] = round(
                baseline[0]["seconds_per_video"] / best["seconds_per_video"], 2)
        out[preset] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mini", "gpt2-medium"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n_frames_before", type=int, default=1)
    parser.add_argument("--no-baseline", dest="baseline", action="store_false")
    args = parser.parse_args()

    load = _load()
    tokenizer = make_tokenizer()
    results = [r for preset in args.models for r in bench_model(tokenizer, preset, args)]
    print(json.dumps({
        "device": str(jax.devices()[0]), "device_kind": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(), "num_frames": NUM_FRAMES,
        "frame": list(tokenizer.frame_shape[:2]), "frame_tokens": tokenizer.frame_tokens,
        "vocab": tokenizer.num_embeddings, "n_frames_before": args.n_frames_before,
        "method": "greedy", "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "results": results, "summary": summary(results),
        "load_average_1min": [load, _load()],
    }, indent=1))


if __name__ == "__main__":
    main()
