"""Stage 3, the refiner of decoded in-betweens: the module, its training stage (train, resume,
held-out figures), generation with it, and bundles that carry it."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import gpt_tiny, refiner_demo
from ganime_jax import bundle, checkpointing, export, generation, sample
from ganime_jax.data import pixels, tfds_io
from ganime_jax.errors import UserError
from ganime_jax.evaluation import run as eval_run
from ganime_jax.metrics import image
from ganime_jax.models.refiner import FrameRefiner
from ganime_jax.refiner import load_refiner
from ganime_jax.train import entry, refiner_step
from refiner_helpers import tiny_refiner_config
from stage2_helpers import gpt_workdir

pytestmark = pytest.mark.costly(seconds=60)


def _tiny_config(data_root: str, tokenizer_workdir: str, num_steps: int):
    """refiner_demo on the tiny dataset and tokenizer, clips of 4 to 8 frames."""
    return tiny_refiner_config(refiner_demo.get_config(), data_root, tokenizer_workdir,
                               num_steps, min_frames=4, max_frames=8)


@pytest.fixture(scope="module")
def run(stage1_workdirs, tmp_path_factory):
    """A tiny refiner trained 2 steps through the seed-0 tiny tokenizer, then resumed to 3, and
    a tiny GPT run (random parameters) on the same tokenizer."""
    root = tmp_path_factory.mktemp("refiner")
    workdir = root / "refiner_run"
    data_root, vqgan = stage1_workdirs["data_root"], stage1_workdirs["workdir"]
    first = entry.train(_tiny_config(data_root, vqgan, 2), workdir)
    resumed = entry.train(_tiny_config(data_root, vqgan, 3), workdir)
    gpt_config = gpt_tiny.get_config()
    gpt_config.tokenizer.workdir = vqgan
    gpt_config.data.data_root = data_root
    gpt = gpt_workdir(root / "gpt_run", gpt_config)
    return dict(root=root, refiner=workdir, first=first, resumed=resumed, data_root=data_root,
                vqgan=vqgan, other_vqgan=stage1_workdirs["other_workdir"], gpt=gpt,
                gpt_config=gpt_config)


def test_refiner_starts_near_the_decoded_frame():
    rng = np.random.default_rng(0)
    images = [jnp.asarray(rng.uniform(-1, 1, (2, 8, 16, 3)), jnp.float32) for _ in range(5)]
    model = FrameRefiner(widths=(4, 8))
    params = model.init(jax.random.key(0), *images, jnp.array([0.25, 0.5]))
    out = model.apply(params, *images, jnp.array([0.25, 0.5]))
    weights = jax.nn.softmax(jnp.asarray(model.blend_init))
    expected = weights[0] * images[0] + weights[1] * images[1] + weights[2] * images[2]
    np.testing.assert_allclose(out, expected, atol=1e-5)  # zero-initialised heads
    assert float(weights[0]) > 0.95
    with pytest.raises(UserError, match="divide by 4"):
        FrameRefiner(widths=(4, 8, 8)).init(jax.random.key(0), *[x[:, :6] for x in images],
                                            jnp.zeros((2,)))


def test_the_psnr_term_is_the_eval_psnr():
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (2, 8, 16, 3), dtype=np.uint8) for _ in range(6)]
    truth, decoded, *given = frames
    np.testing.assert_allclose(
        refiner_step.frame_psnr(pixels.to_unit(decoded), pixels.to_unit(truth)),
        image.psnr(decoded, truth), rtol=1e-5)
    model = FrameRefiner(widths=(4, 8))
    inputs = tuple(pixels.to_unit(x) for x in (decoded, *given)) + (jnp.array([0.25, 0.5]),)
    params = model.init(jax.random.key(0), *inputs)["params"]
    fns = refiner_step.StepFns(model=model, tx=None, tokenizer=None, grid_shape=(1, 1))
    loss_cfg = refiner_demo.get_config().loss
    loss_cfg.update(l1_weight=2.0, perceptual_weight=0.0, psnr_weight=0.5)
    terms = refiner_step.losses(fns, params, inputs, pixels.to_unit(truth), None, loss_cfg)
    refined = model.apply({"params": params}, *inputs)
    expected_psnr = jnp.mean(refiner_step.frame_psnr(refined, pixels.to_unit(truth)))
    np.testing.assert_allclose(terms["psnr"], expected_psnr, rtol=1e-6)
    np.testing.assert_allclose(terms["loss"], 2.0 * terms["l1"] - 0.5 * terms["psnr"], rtol=1e-6)
    loss_cfg.psnr_weight = 0.0
    assert "psnr" not in refiner_step.losses(fns, params, inputs, pixels.to_unit(truth), None,
                                             loss_cfg)


def test_training_resumes_and_reports_held_out_figures(run):
    assert run["first"].step == 2 and run["resumed"].step == 3
    final = json.loads((run["refiner"] / "final_metrics.json").read_text())
    assert final["step"] == 3
    figures = final["eval"]
    # every in-between of each test clip (4 to 8 frames: 2 to 6 of them)
    clips = tfds_io.first_records(run["data_root"], "tiny_anime_clips", "test", min_frames=4,
                                  count=100)
    assert figures["num_frames"] == sum(min(len(c["frames"]), 8) - 2 for c in clips)
    for name in ("l1", "lpips", "l1_decoded", "lpips_decoded", "psnr", "psnr_decoded"):
        assert np.isfinite(figures[name]) and figures[name] >= 0
    assert figures["lpips_gain"] == pytest.approx(figures["lpips_decoded"] - figures["lpips"])
    assert set(run["resumed"].last_metrics) >= {"l1", "lpips", "loss", "grad_norm"}
    saved = checkpointing.read_config(run["refiner"])
    assert saved.stage == "refiner" and saved.train.num_steps == 3


def test_generation_with_the_refiner(run):
    config = run["gpt_config"].copy_and_resolve_references()
    plain = sample.load_generator(config, run["gpt"])
    config.sample.refiner_workdir = str(run["refiner"])
    refined = sample.load_generator(config, run["gpt"])
    assert plain.refiner is None and refined.refiner.step == 3
    clips = tfds_io.first_records(run["data_root"], "tiny_anime_clips", "test", min_frames=5,
                                  count=2)
    truth = np.stack([np.asarray(c["frames"])[:5] for c in clips])
    out = [generation.generate_frames(g.tokenizer, g.transformer, g.params, truth[:, 0],
                                      truth[:, -1], 5, jax.random.key(0), method="greedy",
                                      refiner=g.refiner) for g in (plain, refined)]
    assert out[1].shape == out[0].shape == truth.shape and out[1].dtype == np.uint8
    for clip in out:  # the given frames themselves at both ends
        np.testing.assert_array_equal(clip[:, 0], truth[:, 0])
        np.testing.assert_array_equal(clip[:, -1], truth[:, -1])
    assert not np.array_equal(out[0][:, 1:-1], out[1][:, 1:-1])


def test_the_draw_weight_mixes_the_draw_back_in(run):
    rng = np.random.default_rng(2)
    drawn, first, last = (rng.integers(0, 256, (1, 3, 8, 16, 3), dtype=np.uint8)
                          for _ in range(3))
    ends = first[:, 0], last[:, 0], first[:, 1], last[:, 1]
    refined = {w: load_refiner(run["refiner"], draw_weight=w).refine(drawn, *ends, num_frames=5)
               for w in (0.0, 0.25, 1.0)}
    np.testing.assert_array_equal(refined[1.0], drawn)  # all draw: the draw itself
    assert not np.array_equal(refined[0.0], drawn)
    mixed = 0.75 * refined[0.0].astype(np.float32) + 0.25 * drawn.astype(np.float32)
    np.testing.assert_allclose(refined[0.25], mixed, atol=1.0)  # one rounding of uint8 apart
    config = run["gpt_config"].copy_and_resolve_references()
    config.sample.update(refiner_workdir=str(run["refiner"]), refiner_draw_weight=1.5)
    with pytest.raises(UserError, match="refiner_draw_weight must be in"):
        sample.load_generator(config, run["gpt"])


def test_bundle_carries_the_refiner(run, tmp_path, monkeypatch):
    out = export.export_bundle(run["gpt"], tmp_path / "bundle",
                               refiner_workdir=str(run["refiner"]))
    manifest = json.loads((out / bundle.MANIFEST).read_text())
    assert manifest["refiner"]["step"] == 3
    moved = tmp_path / "moved"
    shutil.move(out, moved)
    monkeypatch.chdir(tmp_path)  # resolved against the bundle folder, not the directory
    loaded = bundle.load_sample_run(moved)
    assert loaded.config.sample.refiner_workdir == str(moved.absolute() / bundle.REFINER_DIR)
    generator = sample.load_generator(loaded.config, loaded.workdir)
    source = load_refiner(run["refiner"])
    for a, b in zip(jax.tree.leaves(generator.refiner.params), jax.tree.leaves(source.params)):
        np.testing.assert_array_equal(a, b)
    assert generator.refiner.draw_weight == 0.0
    # without one: the GPT run's own setting ("" here)
    plain = export.export_bundle(run["gpt"], tmp_path / "plain")
    assert json.loads((plain / bundle.MANIFEST).read_text())["refiner"] is None
    assert bundle.load_sample_run(plain).config.sample.refiner_workdir == ""
    mixing = export.export_bundle(run["gpt"], tmp_path / "mixing",
                                  refiner_workdir=str(run["refiner"]),
                                  sample_settings=("refiner_draw_weight=0.25",))
    loaded = bundle.load_sample_run(mixing)
    assert sample.load_generator(loaded.config, loaded.workdir).refiner.draw_weight == 0.25


def test_a_refiner_of_another_tokenizer_is_refused(run, tmp_path):
    other = tmp_path / "other_refiner"
    entry.train(_tiny_config(run["data_root"], run["other_vqgan"], 1), other)
    with pytest.raises(UserError, match="trained through the tokenizer"):
        export.export_bundle(run["gpt"], tmp_path / "bundle", refiner_workdir=str(other))
    with pytest.raises(UserError, match="refiner workdir .* does not exist"):
        export.export_bundle(run["gpt"], tmp_path / "bundle2",
                             refiner_workdir=str(tmp_path / "missing"))


def test_eval_reports_the_refined_model(run, tmp_path):
    config = run["gpt_config"].copy_and_resolve_references()
    config.sample.refiner_workdir = str(run["refiner"])
    config.evaluate.update(num_clips=2, num_frames=5, seeds=(0,), fvd=False,
                           output_dir=str(tmp_path / "eval"),
                           feature_cache_dir=str(tmp_path / "features"))
    results = eval_run.run_eval(config, run["gpt"])
    assert results["refiner_step"] == 3
    assert results["methods"]["model"]["label"] == "model (greedy, refined)"
    assert any("stage-3 refiner of" in note for note in results["notes"])
    config.sample.refiner_draw_weight = 0.25
    assert (eval_run.settings_from_config(config).sampling_label()
            == "greedy, refined keeping 0.25 of the draw")
    config.sample.refiner_workdir = ""
    assert not eval_run.settings_from_config(config).refined
