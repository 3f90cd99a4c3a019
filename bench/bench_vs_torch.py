"""Our speed against the PyTorch reference (bench/torch_reference.py), measured in one run; JSON.

    .venv/bin/python bench/bench_vs_torch.py [--config configs/vqgan_torchganime.py]
        [--batch 8] [--repeats 5] [--gpts mini gpt2-medium] [--no-video]

Both sides run the same VQ-GAN weights: the reference's random state dict, converted by
`ganime_jax.convert.taming` (the token indices of both are compared and reported). fp32, all
cores: `torch.set_num_threads(os.cpu_count())`; XLA:CPU uses every core by default. Each
workload runs once on each side to warm up (compilation), then ours and the reference's take
turns `--repeats` times (`bench_generation.interleaved_seconds`); the medians are reported
with `ratio` = reference / ours (above 1: we are faster). Workloads:
- `encode`: frames (batch, H, W, 3) -> tokens; `decode`: tokens -> frames, ours as one call and
  as generation does it on CPU (`decode_in_batches`, uint8 out);
- `video`: a 16-frame clip from its two ends, batch 1, per GPT size (`mini`: 256 wide, 4
  layers; `gpt2-medium`), with the port's context (the last frame and the previous frame).
  The reference is TorchGANime's loop (`port_generate`: per frame encode, a
  `GPT2LMHeadModel` forward over the countdown token and 256 frame tokens, argmax, decode);
  ours is `generation.generate_frames` with the window layout (the last frame's keys/values
  computed once per clip) and with the sequence layout (a frame cache).
The CPU's model name and its vector extensions come from /proc/cpuinfo.
"""
import argparse
import json
import os
import pathlib
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.bench_generation import (NUM_FRAMES, interleaved_seconds,  # noqa: E402
                                    make_transformer)
from bench.bench_vqgan_train import _load_config  # noqa: E402
from bench.cpu_info import cpu_description  # noqa: E402
from bench.torch_reference import port_generate, vqmodel_from_config  # noqa: E402
from ganime_jax import generation  # noqa: E402
from ganime_jax.convert.taming import convert_taming_state_dict  # noqa: E402
from ganime_jax.models.gpt import gpt_preset  # noqa: E402
from ganime_jax.models.vqgan import VQGAN  # noqa: E402
from ganime_jax.tokenizer import Tokenizer  # noqa: E402

PATHS = {"window": "prefix", "sequence": "sequence"}  # ours, by bench_generation's path names


def ratios(seconds: dict[str, float], reference: str = "reference") -> dict[str, Any]:
    out = {name: round(s, 4) for name, s in seconds.items()}
    out.update({f"ratio_{name}": round(seconds[reference] / s, 3)
                for name, s in seconds.items() if name != reference})
    return out


def codec(config: Any, vq: torch.nn.Module, params: Any, tokenizer: Tokenizer, batch: int,
          repeats: int) -> dict[str, Any]:
    model = VQGAN(**config.model)
    frames = np.random.default_rng(0).uniform(
        -1, 1, (batch, config.data.height, config.data.width, 3)).astype(np.float32)
    frames_t = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
    encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=VQGAN.encode)[0])
    decode = jax.jit(lambda p, i: model.apply({"params": p}, i, method=VQGAN.decode))
    ours = np.asarray(encode(params, frames))
    with torch.no_grad():
        theirs = vq.encode(frames_t)
    tokens = jnp.asarray(ours)
    flat = tokens.reshape(batch, -1)
    with torch.no_grad():
        encode_s = interleaved_seconds({
            "ours": lambda: encode(params, frames),
            "reference": lambda: vq.encode(frames_t)}, repeats)[2]
        decode_s = interleaved_seconds({
            "ours": lambda: decode(params, tokens),
            "ours_in_batches": lambda: generation.decode_in_batches(
                tokenizer, flat, generation.default_decode_batch_size()),
            "reference": lambda: vq.decode(torch.from_numpy(ours))}, repeats)[2]
    return {"batch": batch, "indices_match": float(np.mean(ours == theirs.numpy())),
            "encode": ratios(encode_s), "decode": ratios(decode_s)}


def video(tokenizer: Tokenizer, vq: torch.nn.Module, preset: str, repeats: int
          ) -> dict[str, Any]:
    vocab, frame_tokens = tokenizer.num_embeddings, tokenizer.frame_tokens
    ours = {name: make_transformer(preset, vocab, frame_tokens, 1, path)
            for name, path in PATHS.items()}
    sizes = gpt_preset(preset)
    gpt = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=vocab + NUM_FRAMES, n_positions=sizes["n_positions"], n_embd=sizes["n_embd"],
        n_layer=sizes["n_layer"], n_head=sizes["n_head"])).eval()
    rng = np.random.default_rng(0)
    first, last = (rng.integers(0, 256, (1, *tokenizer.frame_shape), dtype=np.uint8)
                   for _ in range(2))
    fns = {name: (lambda model=model, params=params: generation.generate_frames(
        tokenizer, model, params, first, last, NUM_FRAMES, jax.random.key(0),
        decode_batch_size=generation.default_decode_batch_size()))
        for name, (model, params) in ours.items()}
    fns["reference"] = lambda: port_generate(vq, gpt, first, last, NUM_FRAMES, vocab)
    return {"gpt": preset, "batch": 1, "frames": NUM_FRAMES,
            "seconds_per_video": ratios(interleaved_seconds(fns, repeats)[2])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/vqgan_torchganime.py",
                        help="stage-1 config with taming's layers (both sides build it)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gpts", nargs="+", default=["mini", "gpt2-medium"])
    parser.add_argument("--no-video", dest="video", action="store_false")
    args = parser.parse_args()

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    config = _load_config(args.config)
    vq = vqmodel_from_config(config.model)
    state = {k: v.numpy() for k, v in vq.state_dict().items()}
    params = jax.tree.map(jnp.asarray, convert_taming_state_dict(state).vqgan_params)
    tokenizer = Tokenizer(config=config, model=VQGAN(**config.model), params=params, step=0,
                          workdir=pathlib.Path("."))
    load = os.getloadavg()[0]
    result = {"cpu": cpu_description(), "config": args.config, "torch": torch.__version__,
              "torch_threads": torch.get_num_threads(), "jax": jax.__version__,
              "frame": [config.data.height, config.data.width],
              "codec": codec(config, vq, params, tokenizer, args.batch, args.repeats)}
    print(json.dumps(result["codec"]), file=sys.stderr, flush=True)
    if args.video:
        result["video"] = []
        for preset in args.gpts:
            result["video"].append(video(tokenizer, vq, preset, args.repeats))
            print(json.dumps(result["video"][-1]), file=sys.stderr, flush=True)
    result["load_average_1min"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
