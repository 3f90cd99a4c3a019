"""Stage 3 on the GPT's own draws: candidate statistics, the candidates dataset (built, resumed),
a refiner trained on it, and generation that feeds it."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import gpt_tiny, refiner_mnist_demo
from data_prep.candidates import parse_num_clips
from ganime_jax import bundle, candidate_dataset, export, generation, sample
from ganime_jax.data import tfds_io
from ganime_jax.errors import UserError
from ganime_jax.models.refiner import CANDIDATE_STATISTICS, FrameRefiner
from ganime_jax.train import entry
from refiner_helpers import tiny_refiner_config
from stage2_helpers import gpt_workdir

pytestmark = pytest.mark.costly(seconds=60)

NUM_FRAMES = 5  # gpt_tiny's evaluate.num_frames
SAMPLE = ("method=top_k", "top_k=5", "candidates=2", "selection=medoid")


def _refiner_config(data_root: str, tokenizer_workdir: str, num_steps: int):
    """refiner_mnist_demo on the tiny dataset and tokenizer, whole clips of NUM_FRAMES."""
    return tiny_refiner_config(refiner_mnist_demo.get_config(), data_root, tokenizer_workdir,
                               num_steps, min_frames=NUM_FRAMES, max_frames=NUM_FRAMES)


@pytest.fixture(scope="module")
def run(stage1_workdirs, tmp_path_factory):
    """A tiny GPT (random parameters) bundled to draw 2 candidates kept by their medoid, the
    candidates dataset it draws (4 train and 2 test clips, shards of 1), and a refiner trained
    on it for 2 steps."""
    root = tmp_path_factory.mktemp("candidates")
    data_root, vqgan = stage1_workdirs["data_root"], stage1_workdirs["workdir"]
    gpt_config = gpt_tiny.get_config()
    gpt_config.tokenizer.workdir = vqgan
    gpt_config.data.data_root = data_root
    gpt = gpt_workdir(root / "gpt_run", gpt_config)
    bundle_dir = export.export_bundle(gpt, root / "bundle", sample_settings=SAMPLE)
    path = candidate_dataset.build_candidate_dataset(bundle_dir, data_root,
                                                     {"train": 4, "test": 2}, clips_per_shard=1,
                                                     draw_batch_size=2)
    refiner = root / "refiner_run"
    result = entry.train(_refiner_config(data_root, vqgan, 2), refiner)
    return dict(root=root, data_root=data_root, vqgan=vqgan, gpt=gpt, bundle=bundle_dir,
                path=path, refiner=refiner, result=result, gpt_config=gpt_config)


def test_the_module_blends_the_candidates_median_and_mean():
    rng = np.random.default_rng(0)
    images = [jnp.asarray(rng.uniform(-1, 1, (2, 8, 16, 3)), jnp.float32) for _ in range(5)]
    statistics = jnp.asarray(rng.uniform(-1, 1, (2, 8, 16, 3 * len(CANDIDATE_STATISTICS))),
                             jnp.float32)
    model = FrameRefiner(widths=(4, 8), candidate_statistics=True,
                         blend_init=(1.0, -1.0, -1.0, 0.5, 0.0))
    fraction = jnp.array([0.25, 0.5])
    params = model.init(jax.random.key(0), *images, fraction, statistics)
    out = model.apply(params, *images, fraction, statistics)
    weights = jax.nn.softmax(jnp.asarray(model.blend_init))
    sources = [images[0], images[1], images[2], statistics[..., :3], statistics[..., 3:6]]
    expected = sum(w * x for w, x in zip(weights, sources))
    np.testing.assert_allclose(out, expected, atol=1e-5)  # zero-initialised heads
    with pytest.raises(ValueError, match="statistics missing"):
        model.apply(params, *images, fraction)
    with pytest.raises(UserError, match="blends 5 images"):
        FrameRefiner(widths=(4, 8), candidate_statistics=True).init(
            jax.random.key(0), *images, fraction, statistics)


def test_candidate_statistics_are_the_median_mean_and_spread():
    rng = np.random.default_rng(1)
    candidates = rng.integers(0, 256, (2, 3, 4, 5, 6, 3), dtype=np.uint8)
    out = generation.candidate_statistics(candidates)
    values = candidates.astype(np.float64)
    expected = [np.median(values, 1), values.mean(1), values.std(1)]
    assert out.shape == (2, 4, 5, 6, 9) and out.dtype == np.uint8
    for index, statistic in enumerate(expected):
        np.testing.assert_allclose(out[..., 3 * index:3 * index + 3], statistic, atol=0.51)


def test_the_dataset_holds_the_truth_beside_what_was_drawn(run):
    summary = tfds_io.dataset_summary(run["data_root"], run["path"].name)
    assert summary["kind"] == "candidates"
    assert summary["splits"]["train"]["num_examples"] == 4
    assert summary["splits"]["test"]["n_frames_counts"] == {str(NUM_FRAMES): 2}
    height, width, _ = summary["frame_shape"]
    assert summary["frame_shape"][-1] == 3 * len(tfds_io.CANDIDATE_IMAGES)
    assert tfds_io.read_metadata(run["data_root"], run["path"].name)["draws"]["candidates"] == 2
    records = tfds_io.first_records(run["data_root"], run["path"].name, "test",
                                    min_frames=NUM_FRAMES, count=2)
    truth = tfds_io.first_records(run["data_root"], "tiny_anime_clips", "test",
                                  min_frames=NUM_FRAMES, count=2)
    generator = sample.load_generator(bundle.load_sample_run(run["bundle"]).config,
                                      run["bundle"] / bundle.GPT_DIR)
    for record, clip in zip(records, truth):
        frames = np.asarray(record["frames"])
        assert frames.shape == (NUM_FRAMES, height, width, 15)
        np.testing.assert_array_equal(frames[..., :3], np.asarray(clip["frames"])[:NUM_FRAMES])
        ends = frames[[0, -1], ..., :3]
        np.testing.assert_array_equal(frames[[0, -1], ..., 3:6],
                                      generator.tokenizer.decode(generator.tokenizer.encode(ends)))
        assert not frames[[0, -1], ..., 6:].any()  # no candidates at the given frames
        median, spread = frames[1:-1, ..., 6:9], frames[1:-1, ..., 12:15]
        # two candidates: the kept one is one of them, the median their mean
        np.testing.assert_allclose(median, frames[1:-1, ..., 9:12], atol=1)
        assert np.abs(frames[1:-1, ..., 3:6].astype(int) - median).max() <= spread.max() + 1


def test_a_build_resumes_from_its_finished_shards(run, monkeypatch, tmp_path):
    calls = []
    real = generation.draw_in_betweens

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return real(*args, **kwargs)

    data_root = tmp_path / "datasets"
    data_root.mkdir()
    (data_root / "tiny_anime_clips").symlink_to(tfds_io.dataset_path(run["data_root"],
                                                                      "tiny_anime_clips"))
    monkeypatch.setattr(generation, "draw_in_betweens", failing)
    build = lambda: candidate_dataset.build_candidate_dataset(
        run["bundle"], str(data_root), {"test": 2}, clips_per_shard=1, draw_batch_size=2)
    with pytest.raises(RuntimeError, match="interrupted"):
        build()
    assert not tfds_io.dataset_exists(str(data_root), run["path"].name)
    calls.clear()
    monkeypatch.setattr(generation, "draw_in_betweens", real)
    counting = lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs)
    monkeypatch.setattr(generation, "draw_in_betweens", counting)
    build()
    assert len(calls) == 1  # the first shard was kept
    again = tfds_io.first_records(str(data_root), run["path"].name, "test",
                                  min_frames=NUM_FRAMES, count=2)
    first = tfds_io.first_records(run["data_root"], run["path"].name, "test",
                                  min_frames=NUM_FRAMES, count=2)
    for a, b in zip(again, first):  # the same draws as the uninterrupted build
        np.testing.assert_array_equal(a["frames"], b["frames"])


def test_the_refiner_trains_on_the_candidates(run):
    assert run["result"].step == 2
    figures = json.loads((run["refiner"] / "final_metrics.json").read_text())["eval"]
    assert figures["num_frames"] == 2 * (NUM_FRAMES - 2)  # every in-between of the test split
    for name in ("l1", "lpips", "l1_decoded", "lpips_decoded"):
        assert np.isfinite(figures[name]) and figures[name] >= 0


def test_generation_feeds_it_the_candidates(run):
    config = bundle.load_sample_run(run["bundle"]).config
    config.sample.refiner_workdir = str(run["refiner"])
    generator = sample.load_generator(config, run["bundle"] / bundle.GPT_DIR)
    assert generator.refiner.uses_candidates
    clips = tfds_io.first_records(run["data_root"], "tiny_anime_clips", "test",
                                  min_frames=NUM_FRAMES, count=2)
    truth = np.stack([np.asarray(c["frames"])[:NUM_FRAMES] for c in clips])
    draw = lambda **choice: generation.generate_frames(
        generator.tokenizer, generator.transformer, generator.params, truth[:, 0], truth[:, -1],
        NUM_FRAMES, jax.random.key(0), method="top_k", top_k=5, refiner=generator.refiner,
        **choice)
    for direction in ("forward", "both"):
        out = draw(candidates=2, selection="medoid", direction=direction)
        assert out.shape == truth.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out[:, 0], truth[:, 0])
    with pytest.raises(UserError, match="statistics of several candidate clips"):
        draw(candidates=1)
    config.sample.candidates = 1
    with pytest.raises(UserError, match="statistics of several candidate clips"):
        sample.load_generator(config, run["bundle"] / bundle.GPT_DIR)


def test_bad_requests_are_one_line_errors(run, tmp_path):
    with pytest.raises(UserError, match="no tiny_anime_candidates dataset"):
        entry.train(_refiner_config(str(tmp_path), run["vqgan"], 1), tmp_path / "refiner")
    plain = export.export_bundle(run["gpt"], tmp_path / "plain")
    with pytest.raises(UserError, match="candidates=1 kept by 'arrival'"):
        candidate_dataset.build_candidate_dataset(plain, run["data_root"], {"test": 1})
    with pytest.raises(UserError, match="no split"):
        candidate_dataset.build_candidate_dataset(run["bundle"], run["data_root"],
                                                  {"validation": 1})
    assert parse_num_clips(["train:8", "test:2"]) == {"train": 8, "test": 2}
    for bad in (["train"], ["train:x"], ["train:1", "train:2"], None):
        with pytest.raises(UserError):
            parse_num_clips(bad)
