"""`--mode=eval` on a tiny tokenizer + GPT: report files, its numbers against direct metric
calls, the baselines on hand-made clips, seeds and greedy decoding, errors, main.py end to end.

Frames are 64x128: LPIPS's VGG runs several times slower on XLA:CPU for 16x32 frames (its
deepest feature maps become 1x2), and the tokenizer gets one more level to keep a 4x8 grid.
"""
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import gpt_tiny, vqgan_tiny
from ganime_jax import batching, cli, sample
from ganime_jax.data import tfds_io
from ganime_jax.errors import UserError
from ganime_jax.evaluation import baselines, report, run, scoring
from ganime_jax.evaluation.set_cache import SetCache
from ganime_jax.losses.perceptual import load_lpips_params
from ganime_jax.metrics import fvd, i3d, image
from ganime_jax.models.vqgan import VQGAN
from ganime_jax.tokenizer import load_tokenizer
from stage2_helpers import gpt_workdir, random_params, save_checkpoint

pytestmark = pytest.mark.costly(seconds=70)

HEIGHT, WIDTH = 64, 128
CLIP_LENGTHS = (4, 6, 7)  # the held-out clips; the first is too short for NUM_FRAMES
NUM_FRAMES = 6
NUM_CLIPS = 2  # all the clips long enough (the dataset decides their order)
METHODS = ["model", "reconstruction", "cross_fade", "hold"]
REPO = pathlib.Path(__file__).resolve().parent.parent

def _clip(index: int, length: int) -> np.ndarray:
    """A square sliding over a gradient; clip 1 holds its first drawing for three frames."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    background = np.stack([(2 * x + 40 * index) % 256, (3 * y) % 256,
                           np.full_like(x, 60 + 30 * index)], axis=-1)
    frames = []
    for t in range(length):
        frame = background.copy()
        left = 8 + 12 * max(t - 2 * (index == 1), 0)
        frame[20:44, left:left + 24] = (255, 255 - 40 * index, 0)
        frames.append(frame.astype(np.uint8))
    return np.stack(frames)


def _clips():
    for index, length in enumerate(CLIP_LENGTHS):
        yield {"frames": _clip(index, length), "n_frames": length, "source": "ep",
               "shot_index": index, "clip_index": 0}


def _tokenizer_workdir(path: pathlib.Path) -> str:
    config = vqgan_tiny.get_config()
    config.data.update(height=HEIGHT, width=WIDTH)
    config.model.channel_multipliers = (1, 2, 2, 2, 2)  # 64x128 -> the 4x8 grid of gpt_tiny
    frames = jax.ShapeDtypeStruct((1, HEIGHT, WIDTH, 3), jnp.float32)
    save_checkpoint(path, {"gen_params": random_params(VQGAN(**config.model), frames, std=0.1)},
                    config)
    return str(path)


def _config(setup: dict, name: str, **evaluate):
    config = gpt_tiny.get_config()
    config.tokenizer.workdir = setup["tokenizer"]
    config.data.update(data_root=setup["data_root"], dataset="tiny")
    config.model.countdown_on_last_frame = False
    config.sample.update(method="top_k", top_k=8)
    config.evaluate.update(num_clips=NUM_CLIPS, num_frames=NUM_FRAMES, seeds=(0, 1),
                           batch_size=1, fvd=False, i3d_batch_size=NUM_CLIPS,
                           metrics_batch_size=8, output_dir=str(setup["root"] / name),
                           feature_cache_dir=str(setup["root"] / "features"))
    config.evaluate.update(**evaluate)
    return config


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("eval")
    data_root = str(root / "data")
    tfds_io.write_dataset(data_root, "tiny_clips", "clips", {"test": _clips()},
                          (HEIGHT, WIDTH, 3))
    setup = dict(root=root, data_root=data_root, tokenizer=_tokenizer_workdir(root / "vqgan"))
    setup["workdir"] = gpt_workdir(root / "gpt", _config(setup, "unused"))
    return setup


@pytest.fixture(scope="module")
def truth(setup) -> np.ndarray:
    clips = sample.heldout_clips(_config(setup, "unused"), NUM_FRAMES, NUM_CLIPS)
    expected = [_clip(i, n)[:NUM_FRAMES] for i, n in enumerate(CLIP_LENGTHS) if n >= NUM_FRAMES]
    assert sorted(c.tobytes() for c in clips) == sorted(c.tobytes() for c in expected)
    return clips


@pytest.fixture(scope="module")
def tokenizer(setup):
    return load_tokenizer(setup["tokenizer"])


@pytest.fixture(scope="module")
def sampled(setup) -> dict:
    """Top-k sampling over two seeds, with FVD."""
    config = _config(setup, "sampled", fvd=True)
    return {"results": run.run_eval(config, setup["workdir"]), "config": config}


def test_report_files_are_written(sampled):
    folder = pathlib.Path(sampled["config"].evaluate.output_dir)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [report.JSON_NAME, report.TABLE_NAME, report.PLOT_NAME])  # no temporary files left
    assert json.loads((folder / report.JSON_NAME).read_text()) == json.loads(
        json.dumps(sampled["results"]))
    assert (folder / report.PLOT_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (folder / report.TABLE_NAME).read_text(encoding="utf-8").splitlines()
    assert table[0] == "| method | runs | FVD ↓ | KVD ↓ | PSNR ↑ (dB) | SSIM ↑ | LPIPS ↓ |"
    rows = {cells[0][2:]: cells for cells in (line.split(" | ") for line in table[2:6])}
    model = rows["model (top_k, k=8, temperature 1.0)"]
    assert model[1] == "2" and all("±" in cell for cell in model[2:])
    for name in METHODS[1:]:
        label = run.BASELINE_LABELS[name]
        assert rows[label][1] == "1" and not any("±" in cell for cell in rows[label])
    assert any("standard deviation over seeds [0, 1]" in line for line in table)


def test_results_hold_every_run_and_the_spread_over_seeds(sampled):
    results = sampled["results"]
    assert list(results["methods"]) == METHODS
    assert (results["num_clips"], results["num_frames"], results["checkpoint_step"]) == (
        NUM_CLIPS, NUM_FRAMES, 1)
    assert results["seeds_run"] == [0, 1] and results["config"]["evaluate"]["fvd"] is True
    model = results["methods"]["model"]
    assert [r["seed"] for r in model["runs"]] == [0, 1] and not model["deterministic"]
    for key in ("fvd", "kvd", "psnr", "ssim", "lpips"):
        values = [r[key] for r in model["runs"]]
        stats = model["aggregate"][key]
        assert values[0] != values[1]  # the seeds sample different clips
        np.testing.assert_allclose([stats["mean"], stats["std"]],
                                   [np.mean(values), np.std(values, ddof=1)], rtol=1e-9)
    curve = model["aggregate"]["per_position"]["lpips"]
    assert len(curve["mean"]) == len(curve["std"]) == NUM_FRAMES - 2
    for name in METHODS[1:]:
        method = results["methods"][name]
        assert method["deterministic"] and [r["seed"] for r in method["runs"]] == [None]
        assert method["aggregate"]["psnr"]["std"] is None
        assert len(method["runs"][0]["per_video"]["ssim"]) == NUM_CLIPS


def test_baseline_numbers_equal_direct_metric_calls(sampled, setup, truth, tokenizer):
    methods = sampled["results"]["methods"]
    made = {"cross_fade": baselines.cross_fade(truth), "hold": baselines.hold(truth),
            "reconstruction": baselines.vqgan_reconstruction(tokenizer, truth, 2)}
    lpips_params = load_lpips_params()
    for name, clips in made.items():
        run_ = methods[name]["runs"][0]
        a, b = truth[:, 1:-1], clips[:, 1:-1]
        psnr = np.minimum(np.asarray(image.psnr(a, b)), scoring.PSNR_CAP_DB)
        ssim = np.asarray(image.ssim(a, b, gaussian_weights=True, use_sample_covariance=False))
        lpips = image.lpips_frames(lpips_params, a, b, batch_size=8)
        for key, values in (("psnr", psnr), ("ssim", ssim), ("lpips", lpips)):
            np.testing.assert_allclose(run_["per_video"][key], values.mean(axis=1), rtol=1e-5,
                                       atol=1e-6, err_msg=f"{name} {key}")
            np.testing.assert_allclose(run_["per_position"][key], values.mean(axis=0),
                                       rtol=1e-5, atol=1e-6, err_msg=f"{name} {key}")
            np.testing.assert_allclose(run_[key], values.mean(), rtol=1e-5, err_msg=name)
    # The held drawing: hold copies frames 1 and 2 exactly (infinite PSNR, scored as the cap).
    [held] = [i for i, clip in enumerate(truth) if np.array_equal(clip[0], clip[2])]
    assert np.all(np.isinf(np.asarray(image.psnr(truth[held, 1:3], made["hold"][held, 1:3]))))
    assert methods["hold"]["runs"][0]["per_video"]["psnr"][held] > scoring.PSNR_CAP_DB / 2

    params = i3d.load_i3d_params()
    real = i3d.i3d_logits(truth, params=params)
    cache = SetCache.for_truth(str(setup["root"] / "features"), truth, ssim_gaussian=True)
    stored = cache.i3d_features(truth, lambda: pytest.fail("the true clips are not cached"))
    np.testing.assert_allclose(stored, real, rtol=1e-4, atol=1e-4)
    fake = i3d.i3d_logits(made["cross_fade"], params=params)
    np.testing.assert_allclose(methods["cross_fade"]["runs"][0]["fvd"],
                               fvd.frechet_distance(real, fake), rtol=1e-3)
    np.testing.assert_allclose(methods["cross_fade"]["runs"][0]["kvd"],
                               fvd.kernel_distance(real, fake), rtol=1e-3, atol=1e-6)


def test_model_mean_is_the_pixel_mean_of_the_seeds_clips(setup, truth):
    """The model_mean row scores the rounded per-pixel mean of the clips the model sampled
    with each seed, as one deterministic run after the model's rows."""
    config = _config(setup, "mean", methods=("model", "model_mean"), seeds=(0, 1, 2))
    settings = run.settings_from_config(config)
    generator = sample.load_generator(config, setup["workdir"])
    runs, _ = run.evaluate(generator.tokenizer, generator, truth, settings)
    assert list(runs) == ["model", "model_mean"] and len(runs["model_mean"]) == 1
    seeds = [run.generate_set(generator, truth, seed, settings) for seed in (0, 1, 2)]
    mean = np.rint((seeds[0].astype(np.float64) + seeds[1] + seeds[2]) / 3).astype(np.uint8)
    assert not np.array_equal(mean, seeds[0])
    a, b = truth[:, 1:-1], mean[:, 1:-1]
    np.testing.assert_allclose(runs["model_mean"][0]["psnr"], np.minimum(
        np.asarray(image.psnr(a, b)), scoring.PSNR_CAP_DB).mean(), rtol=1e-5)
    np.testing.assert_allclose(runs["model_mean"][0]["lpips"], image.lpips_frames(
        load_lpips_params(), a, b, batch_size=8).mean(), rtol=1e-5)
    assert runs["model_mean"][0]["seed"] is None
    assert run._methods(runs, settings)["model_mean"]["label"] == (
        "model, pixel mean of its 3 clips")


def test_a_second_eval_is_served_from_the_cache_and_a_new_truth_is_not(sampled, setup, truth,
                                                                         monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("recomputed what the cache holds")
    monkeypatch.setattr(image, "lpips_against", no_work)
    monkeypatch.setattr(i3d, "i3d_logits", no_work)
    again = run.run_eval(_config(setup, "sampled_again", fvd=True), setup["workdir"])
    for name, method in sampled["results"]["methods"].items():
        assert again["methods"][name]["runs"] == method["runs"], name

    folder = str(setup["root"] / "features")
    changed = truth.copy()
    changed[0, 1, 0, 0, 0] ^= 1
    fade = baselines.cross_fade(truth)
    assert SetCache.for_truth(folder, truth, ssim_gaussian=True).frame_scores(fade) is not None
    for other in (SetCache.for_truth(folder, changed, ssim_gaussian=True),
                  SetCache.for_truth(folder, truth, ssim_gaussian=False)):
        assert other.frame_scores(fade) is None
    with pytest.raises(AssertionError, match="recomputed"):
        SetCache.for_truth(folder, changed, True).i3d_features(changed, no_work)


def test_cross_fade_hold_and_black_on_hand_made_clips():
    first, last = np.full((2, 3, 4, 3), 10, np.uint8), np.full((2, 3, 4, 3), 210, np.uint8)
    for num_frames, faded, held, black in (
            (5, [10, 60, 110, 160, 210], [10, 10, 10, 210, 210], [10, 0, 0, 0, 210]),
            (4, [10, 77, 143, 210], [10, 10, 210, 210], [10, 0, 0, 210])):
        clips = np.concatenate([first[:, None]] + [np.full((2, num_frames - 2, 3, 4, 3), 77,
                                                           np.uint8)] + [last[:, None]], axis=1)
        for fn, expected in ((baselines.cross_fade, faded), (baselines.hold, held),
                             (baselines.black, black)):
            out = fn(clips)
            assert out.dtype == np.uint8 and out.shape == clips.shape
            np.testing.assert_array_equal(
                out, np.broadcast_to(np.array(expected, np.uint8)[None, :, None, None, None],
                                     clips.shape))
    with pytest.raises(UserError, match="T >= 3"):
        baselines.hold(np.zeros((1, 2, 3, 4, 3), np.uint8))
    with pytest.raises(UserError, match="uint8"):
        baselines.cross_fade(np.zeros((1, 4, 3, 4, 3), np.float32))


def test_reconstruction_keeps_the_ends_and_codes_the_middle(truth, tokenizer):
    out = baselines.vqgan_reconstruction(tokenizer, truth, decode_batch_size=2)
    np.testing.assert_array_equal(out[:, [0, -1]], truth[:, [0, -1]])
    middle = truth[:, 1:-1].reshape(-1, HEIGHT, WIDTH, 3)
    expected = np.asarray(tokenizer.decode(tokenizer.encode(middle)))
    # decoded 2 frames at a time against all at once: two programs, whose float rounding may
    # put a pixel on the other side of a uint8 level
    np.testing.assert_allclose(out[:, 1:-1].reshape(middle.shape).astype(int),
                               expected.astype(int), rtol=0, atol=1)
    assert np.abs(out[:, 1:-1].astype(int) - truth[:, 1:-1]).mean() > 1  # not a copy


def test_map_in_batches_pads_the_last_batch_and_drops_its_outputs():
    calls = []

    def fn(index, a, b):
        calls.append((index, len(a)))
        return a * 10 + b

    a, b = np.arange(7), np.arange(7) % 3
    np.testing.assert_array_equal(batching.map_in_batches(fn, (a, b), 3), a * 10 + b)
    assert calls == [(0, 3), (1, 3), (2, 3)]
    np.testing.assert_array_equal(batching.map_in_batches(fn, (a, b), 10), a * 10 + b)
    assert calls[-1] == (0, 7)


def test_errors_are_one_line(setup, tmp_path):
    empty = str(tmp_path / "empty")
    cases = [
        (dict(num_frames=8), None, r"no held-out clip of tiny_clips/test has 8 frames \(the "
         r"longest has 7\); lower config.evaluate.num_frames"),
        (dict(num_frames=7, fvd=True), None, "only one held-out clip has 7 frames: FVD needs "
         "two"),
        (dict(num_frames=9), None, "config.evaluate.num_frames=9 is not supported"),
        (dict(), empty, "no GPT checkpoint in .*empty; train it"),
        (dict(seeds=(0, 0)), None, "config.evaluate.seeds must be distinct integers"),
        (dict(num_clips=1, fvd=True), None, "num_clips=1 is too small: use at least 2"),
        (dict(method="beam"), None, "sampling method 'beam' is unknown"),
        (dict(batch_size=0), None, "config.evaluate.batch_size must be at least 1"),
        (dict(methods=("model", "model_mean"), method="greedy"), None,
         "'model_mean'.* needs 'model' in the methods, a sampling method other than greedy"),
        (dict(methods=("model", "model_mean"), seeds=(0,)), None, "at least two seeds"),
        (dict(methods=("model_mean", "hold")), None, "needs 'model' in the methods"),
    ]
    for evaluate, workdir, message in cases:
        with pytest.raises(UserError, match=message) as error:
            run.run_eval(_config(setup, "errors", **evaluate), workdir or setup["workdir"])
        assert "\n" not in str(error.value)
    missing_data = _config(setup, "errors")
    missing_data.data.data_root = empty
    with pytest.raises(UserError, match="no dataset at"):
        run.run_eval(missing_data, setup["workdir"])
    with pytest.raises(UserError, match="--mode=eval needs a stage-2"):
        run.run_eval(vqgan_tiny.get_config(), setup["workdir"])
    with pytest.raises(UserError, match="--first only applies to --mode=sample"):
        cli.run_mode("eval", _config(setup, "errors"), setup["workdir"], first="a.png")
    for candidates, method, message in ((0, "top_k", "candidates must be an integer >= 1"),
                                        (2, "greedy", "greedy decoding draws 2 identical")):
        config = _config(setup, "errors")
        config.sample.update(candidates=candidates, method=method)
        with pytest.raises(UserError, match=message):
            run.run_eval(config, setup["workdir"])
    assert not (setup["root"] / "errors").exists()


def test_best_of_k_is_in_the_settings_the_label_and_the_clips(setup, truth):
    config = _config(setup, "best_of")
    config.sample.candidates = 2
    settings = run.settings_from_config(config)
    assert settings.sampling()["candidates"] == 2
    assert settings.sampling_label() == "top_k, k=8, temperature 1.0, best of 2 by arrival"
    generator = sample.load_generator(config, setup["workdir"])
    clips = run.generate_set(generator, truth, 0, settings)
    one = run.generate_set(generator, truth, 0, run.settings_from_config(_config(setup, "one")))
    # Best of 2 ends at least as near the last frame as the first draw, and once nearer here.
    def arrival_error(generated):
        return ((generated[:, -2].astype(np.float32) - truth[:, -1]) ** 2).mean(axis=(1, 2, 3))
    assert (arrival_error(clips) <= arrival_error(one)).all()
    assert (arrival_error(clips) < arrival_error(one)).any()
    config.sample.direction = "both"
    settings = run.settings_from_config(config)
    assert settings.sampling()["direction"] == "both"
    assert settings.sampling_label() == ("top_k, k=8, temperature 1.0, halves from both ends, "
                                         "best of 2 by arrival")
    config.sample.direction = "sideways"
    with pytest.raises(UserError, match="unknown sampling direction 'sideways'"):
        run.settings_from_config(config)


def test_main_py_eval_end_to_end_greedy_runs_once(setup):
    """gpt_tiny samples greedily: three seeds, one run, and the table says why."""
    root, output = setup["root"], setup["root"] / "main_eval"
    command = [sys.executable, "main.py", "--config=configs/gpt_tiny.py", "--mode=eval",
               f"--config.tokenizer.workdir={setup['tokenizer']}",
               f"--config.data.data_root={setup['data_root']}", "--config.data.dataset=tiny",
               "--config.model.countdown_on_last_frame=False",
               f"--config.evaluate.num_frames={NUM_FRAMES}", "--config.evaluate.seeds=(3, 4, 5)",
               f"--config.evaluate.output_dir={output}", "--config.evaluate.num_clips=1",
               f"--workdir={setup['workdir']}"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "| method | runs | PSNR ↑ (dB) | SSIM ↑ | LPIPS ↓ |"
    assert lines[2].startswith("| model (greedy) | 1 |")
    assert lines[-3:] == [f"wrote {output / name}" for name in
                          (report.JSON_NAME, report.TABLE_NAME, report.PLOT_NAME)]
    assert any("seeds [3, 4, 5] would give identical clips" in line for line in lines)
    results = json.loads((output / report.JSON_NAME).read_text())
    model = results["methods"]["model"]
    assert results["num_clips"] == 1 and results["seeds_run"] == [3]
    assert [r["seed"] for r in model["runs"]] == [3] and model["deterministic"]
    assert model["aggregate"]["lpips"]["std"] is None and "fvd" not in model["aggregate"]
    failed = subprocess.run(command[:-1] + [f"--workdir={root / 'nothing'}"],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines()[-1].startswith(
        f"error: no GPT checkpoint in {root / 'nothing'}; train it")


def test_a_tokenizer_alone_needs_no_gpt_checkpoint(sampled, setup, tmp_path):
    """Without "model" in config.evaluate.methods: the baselines only, from the cache."""
    config = _config(setup, "tokenizer_only", fvd=True,
                     methods=("black", "hold", "reconstruction", "cross_fade"))
    results = run.run_eval(config, str(tmp_path / "no_gpt_run"))
    # table order, whatever the config's order
    assert list(results["methods"]) == METHODS[1:] + ["black"]
    assert results["checkpoint_step"] is None and results["seeds_run"] == []
    for name in METHODS[1:]:
        assert results["methods"][name]["runs"] == sampled["results"]["methods"][name]["runs"]
    black = results["methods"]["black"]["runs"][0]
    truth = run.heldout_truth(config, run.settings_from_config(config))
    np.testing.assert_allclose(black["psnr"], np.mean(image.psnr(
        truth[:, 1:-1], np.zeros_like(truth[:, 1:-1]))), rtol=1e-5)
    table = (setup["root"] / "tokenizer_only" / report.TABLE_NAME).read_text(encoding="utf-8")
    assert ("no model: config.evaluate.methods selects reconstruction, cross_fade, hold, black "
            "only.") in table
    assert "- model:" not in table and "seeds" not in table
    for methods, message in [((), "config.evaluate.methods=\\(\\)"),
                             (("model", "blur"), "'blur'.*give distinct names"),
                             (("hold", "hold"), "give distinct names")]:
        with pytest.raises(UserError, match=message):
            run.run_eval(_config(setup, "errors", methods=methods), setup["workdir"])
