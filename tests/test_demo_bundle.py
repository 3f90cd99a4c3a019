"""Inference bundles: export from tiny runs, read back by the sampling loaders, zero-flag sample."""
import json
import pathlib
import re
import shutil
import subprocess
import sys
import time
import types

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from configs import gpt_tiny
from ganime_jax import bundle, checkpointing, cli, config_check, export, generation, images, sample
from ganime_jax.data import tfds_io, video_io
from ganime_jax.errors import UserError
from ganime_jax.evaluation import clip_strip
from ganime_jax.tokenizer import load_tokenizer
from ganime_jax.train.token_dataset import tokenizer_metadata
from stage2_helpers import gpt_workdir

REPO = pathlib.Path(__file__).resolve().parent.parent
GPT_STEP = 3
EXAMPLE_CLIP = 1  # the tiny dataset's test split holds two clips of gpt_tiny's 5 sample frames
NO_CONFIG_FLAG = types.SimpleNamespace(present=0, override_values={})


def _export_cli(*args: str, cwd: pathlib.Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ganime_jax.export", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _write_token_dataset(config) -> None:
    """A one-clip stand-in for the token dataset the GPT trained on, recording its tokenizer."""
    tokenizer = load_tokenizer(config.tokenizer.workdir)
    example = {"tokens": np.zeros((4, tokenizer.frame_tokens), np.int16), "n_frames": 4,
               "source": "ep", "shot_index": 0, "clip_index": 0}
    tfds_io.write_dataset(config.data.data_root, tfds_io.variant_name(config.data.dataset,
                                                                      "tokens"),
                          "tokens", {"train": [example]}, (tokenizer.frame_tokens,),
                          metadata={"tokenizer": tokenizer_metadata(tokenizer)}, dtype="int16")


@pytest.fixture(scope="module")
def runs(stage1_workdirs, tmp_path_factory):
    """A tiny stage-2 run on a stage-1 run (both whole train states) and its bundle `demo`,
    exported through the CLI."""
    root = tmp_path_factory.mktemp("bundle")
    config = gpt_tiny.get_config()
    config.tokenizer.workdir = stage1_workdirs["workdir"]
    config.data.data_root = str(root / "datasets")
    clips = tfds_io.variant_name(config.data.dataset, "clips")
    shutil.copytree(tfds_io.dataset_path(stage1_workdirs["data_root"], clips),
                    tfds_io.dataset_path(config.data.data_root, clips))
    _write_token_dataset(config)
    gpt = gpt_workdir(root / "gpt_run", config, step=GPT_STEP)
    out = root / "demo"
    done = _export_cli(f"--gpt_workdir={gpt}", f"--out={out}", f"--example_clip={EXAMPLE_CLIP}")
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(root=root, config=config, gpt=gpt, vqgan=stage1_workdirs["workdir"],
                other_vqgan=stage1_workdirs["other_workdir"], out=out, stdout=done.stdout)


def _stored_keys(workdir: pathlib.Path) -> set[str]:
    """Top-level fields of the `state` item of the newest checkpoint, and its items."""
    directory = checkpointing.checkpoint_dir(workdir)
    step_dir = directory / str(max(int(p.name) for p in directory.iterdir()))
    tree = ocp.PyTreeCheckpointer().metadata(step_dir / checkpointing.STATE_ITEM).item_metadata
    items = {p.name for p in step_dir.iterdir() if p.is_dir()}
    return {f"{checkpointing.STATE_ITEM}.{key}" for key in tree} | {f"item {i}" for i in items}


def test_bundle_holds_only_what_sampling_reads(runs):
    out = runs["out"]
    assert runs["stdout"].strip() == f"wrote {out} ({export.folder_size(out) / 2**20:.1f} MiB)"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [bundle.VQGAN_DIR, bundle.GPT_DIR, bundle.FIRST_FRAME, bundle.LAST_FRAME,
         bundle.MANIFEST])
    assert sorted(p.name for p in runs["root"].iterdir()) == ["datasets", "demo", "gpt_run"]
    assert _stored_keys(pathlib.Path(runs["vqgan"])) == {
        "state.step", "state.gen_params", "state.disc_params", "state.gen_opt_state",
        "state.disc_opt_state", "state.code_usage", "item config", "item data", "item state"}
    assert _stored_keys(pathlib.Path(runs["gpt"])) == {
        "state.step", "state.params", "state.opt_state", "item config", "item data",
        "item state"}
    assert _stored_keys(out / bundle.VQGAN_DIR) == {"state.gen_params", "item config",
                                                    "item state"}
    assert _stored_keys(out / bundle.GPT_DIR) == {"state.params", "item config", "item state"}


def test_manifest_and_bundled_config(runs):
    out = runs["out"]
    manifest = json.loads((out / bundle.MANIFEST).read_text())
    assert manifest["command"].startswith("python -m ganime_jax.export --gpt_workdir=")
    assert manifest["vqgan"]["source_workdir"] == runs["vqgan"]
    assert manifest["gpt"]["source_workdir"] == runs["gpt"]
    assert (manifest["vqgan"]["step"], manifest["gpt"]["step"]) == (1, GPT_STEP)
    assert manifest["tokenizer_fingerprint"] == load_tokenizer(runs["vqgan"]).fingerprint()
    assert manifest["example"]["clip"] == EXAMPLE_CLIP
    stored = json.loads((out / bundle.GPT_DIR / checkpointing.CONFIG_FILENAME).read_text())
    assert stored["tokenizer"]["workdir"] == bundle.VQGAN_DIR
    assert stored["model"] == json.loads(runs["config"].to_json())["model"]


def test_example_frames_are_the_ends_of_a_held_out_clip(runs):
    config = runs["config"]
    clip = sample.heldout_clips(config, config.sample.num_frames, EXAMPLE_CLIP + 1)[EXAMPLE_CLIP]
    for name, frame in ((bundle.FIRST_FRAME, clip[0]), (bundle.LAST_FRAME, clip[-1])):
        np.testing.assert_array_equal(np.asarray(Image.open(runs["out"] / name)), frame)
    assert not np.array_equal(clip[0], clip[-1])


def test_bundle_generates_the_clip_of_the_source_runs(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the bundle does not depend on the current directory
    run = bundle.load_sample_run(runs["out"])
    generators = [sample.load_generator(runs["config"], runs["gpt"]),
                  sample.load_generator(run.config, run.workdir)]
    frames = images.load_frame_pair(run.first, run.last, generators[0].tokenizer.frame_shape)
    settings = runs["config"].sample
    assert settings.method == "greedy"
    clips = [generation.generate_frames(
        g.tokenizer, g.transformer, g.params, frames[0][None], frames[1][None],
        settings.num_frames, jax.random.key(settings.seed), method=settings.method)
        for g in generators]
    np.testing.assert_array_equal(clips[0], clips[1])
    assert generators[1].step == GPT_STEP
    assert generators[1].tokenizer.fingerprint() == generators[0].tokenizer.fingerprint()


def test_a_sequence_layout_bundle_samples(runs, tmp_path):
    """A GPT of the `sequence` layout exports, loads back and generates its source run's clip
    (greedy, through the cached sampler)."""
    config = gpt_tiny.get_config()
    config.update_from_flattened_dict({"tokenizer.workdir": runs["vqgan"],
                                       "data.data_root": runs["config"].data.data_root,
                                       "model.layout": "sequence", "model.gpt.attn_pdrop": 0.0})
    gpt = gpt_workdir(tmp_path / "gpt_run", config, step=GPT_STEP)
    out = export.export_bundle(gpt, tmp_path / "bundle", example_clip=EXAMPLE_CLIP)
    run = bundle.load_sample_run(out)
    generators = [sample.load_generator(config, gpt), sample.load_generator(run.config,
                                                                            run.workdir)]
    assert type(generators[1].transformer).__name__ == "FrameSequenceTransformer"
    frames = images.load_frame_pair(run.first, run.last, generators[0].tokenizer.frame_shape)
    clips = [generation.generate_frames(
        g.tokenizer, g.transformer, g.params, frames[0][None], frames[1][None],
        config.sample.num_frames, jax.random.key(0), method="greedy") for g in generators]
    np.testing.assert_array_equal(clips[0], clips[1])
    assert clips[1].shape == (1, config.sample.num_frames, *generators[1].tokenizer.frame_shape)
    np.testing.assert_array_equal(clips[1][0, 0], frames[0])


def test_eval_of_a_bundle_on_its_validation_clips(runs, tmp_path, monkeypatch):
    """`--config.data.eval_split=validation` scores the validation episodes (built when the
    bundle's tokenizer config asks for them) into workdirs/<bundle>_eval_validation; a dataset
    without that split is one error line; no other data field may be set."""
    copied = tmp_path / "copied"
    shutil.copytree(runs["out"], copied)
    monkeypatch.chdir(tmp_path)

    def resolve(*extra):
        return cli.resolve_run("eval", NO_CONFIG_FLAG, workdir=None, bundle_dir=str(copied),
                               first=None, last=None,
                               bundle_overrides=["--config.data.eval_split=validation", *extra])

    with pytest.raises(UserError, match=r"tiny_anime_clips has no 'validation' split \(it has "
                       r"\['train', 'test'\]\).*delete it"):
        resolve()
    shutil.rmtree("datasets")
    tokenizer_json = copied / bundle.VQGAN_DIR / checkpointing.CONFIG_FILENAME
    amended = json.loads(tokenizer_json.read_text())
    amended["data"]["embedded"]["num_validation_episodes"] = 1
    tokenizer_json.write_text(json.dumps(amended))
    run = resolve()
    assert run.config.data.eval_split == "validation"
    assert run.config.evaluate.output_dir == str(pathlib.Path("workdirs", "copied_eval_validation"))
    clips = tfds_io.open_split("datasets", "tiny_anime_clips", "validation")
    embedded = amended["data"]["embedded"]
    first_validation_episode = embedded["num_train_episodes"] + embedded["num_test_episodes"]
    assert {clips[i]["source"] for i in range(len(clips))} == {
        f"episode_{first_validation_episode:04d}"}
    assert resolve("--config.evaluate.output_dir=elsewhere").config.evaluate.output_dir == \
        "elsewhere"
    with pytest.raises(UserError, match="data.data_root cannot be set here"):
        resolve("--config.data.data_root=other")


def test_eval_of_a_bundle_builds_its_test_clips_and_writes_beside_it(runs, tmp_path,
                                                                     monkeypatch):
    """`--mode=eval --bundle=DIR --config.evaluate.*=...`: no training run needed; a missing
    embedded test set is built (from the tokenizer's dataset settings) under the config's
    data_root, and the report goes to workdirs/<bundle>_eval, not into the bundle."""
    from ganime_jax.evaluation.run import run_eval

    copied = tmp_path / "copied"
    shutil.copytree(runs["out"], copied)
    stored = json.loads((copied / bundle.GPT_DIR / checkpointing.CONFIG_FILENAME).read_text())
    assert stored["data"]["data_root"] == bundle.DATA_ROOT  # not the source run's data_root
    # The test set is built as the bundle's tokenizer config.json says (amended here to two
    # test episodes), not as the config saved inside its checkpoint (one).
    tokenizer_json = copied / bundle.VQGAN_DIR / checkpointing.CONFIG_FILENAME
    amended = json.loads(tokenizer_json.read_text())
    assert amended["data"]["embedded"]["num_test_episodes"] == 1
    amended["data"]["embedded"]["num_test_episodes"] = 2
    tokenizer_json.write_text(json.dumps(amended))
    monkeypatch.chdir(tmp_path)
    overrides = ["--config.evaluate.num_clips=2", "--config.evaluate.seeds=(0,)",
                 "--config.sample.method=greedy"]
    run = cli.resolve_run("eval", NO_CONFIG_FLAG, workdir=None, bundle_dir=str(copied),
                          first=None, last=None, bundle_overrides=overrides)
    assert (run.config.evaluate.num_clips, list(run.config.evaluate.seeds)) == (2, [0])
    assert tfds_io.dataset_exists("datasets", "tiny_anime_clips")
    test_clips = tfds_io.open_split("datasets", "tiny_anime_clips", "test")
    episodes = {test_clips[i]["source"] for i in range(len(test_clips))}
    assert len(episodes) == 2
    results = run_eval(run.config, run.workdir)
    assert results["num_clips"] == 2 and results["seeds_run"] == [0]
    assert (tmp_path / "workdirs" / "copied_eval" / "results.json").is_file()
    assert sorted(p.name for p in copied.iterdir()) == sorted(p.name for p in runs["out"].iterdir())
    # The README's strip of held-out clips, from the same bundle and test set.
    strip = np.asarray(Image.open(clip_strip.write_strip(copied, tmp_path / "strip.png",
                                                         num_clips=2, every=3)))
    truth = sample.heldout_clips(run.config, run.config.evaluate.num_frames, 2)
    height, width = truth.shape[2:4]
    positions = sorted({*range(0, truth.shape[1], 3), truth.shape[1] - 1})
    assert strip.shape == (4 * height + 4 * clip_strip.GAP,
                           len(positions) * (width + clip_strip.GAP) - clip_strip.GAP, 3)
    second_clip_truth = 3 * (height + clip_strip.GAP) + clip_strip.GAP
    for column, t in enumerate(positions):
        left = column * (width + clip_strip.GAP)
        np.testing.assert_array_equal(  # true frames in the row below the generated ones
            strip[second_clip_truth:second_clip_truth + height, left:left + width], truth[1, t])
    np.testing.assert_array_equal(strip[:height, :width], truth[0, 0])  # the given first frame
    for bad, message in (("--config.train.num_steps=3", "only fields of evaluate, sample"),
                         ("--config.evaluate.num_clip=3", "did you mean"),
                         ("--config.evaluate.num_clips=many", "expected a value like")):
        with pytest.raises(UserError, match=message):
            cli.resolve_run("eval", NO_CONFIG_FLAG, workdir=None, bundle_dir=str(copied),
                            first=None, last=None, bundle_overrides=[bad])


def test_zero_flag_sample_uses_the_bundle(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(bundle, "DEMO_BUNDLE", runs["out"])
    monkeypatch.chdir(tmp_path)
    run = cli.resolve_run("sample", NO_CONFIG_FLAG, workdir=None, bundle_dir=None, first=None,
                          last=None)
    out = runs["out"]
    assert run.workdir == str(out / bundle.GPT_DIR)
    assert (run.first, run.last) == (str(out / bundle.FIRST_FRAME), str(out / bundle.LAST_FRAME))
    assert run.config.tokenizer.workdir == str(out / bundle.VQGAN_DIR)
    cli.run_mode("sample", run.config, run.workdir, first=run.first, last=run.last,
                 num_frames=None, output=None)
    written = tmp_path / "workdirs" / "demo_sample"
    assert sorted(p.name for p in written.iterdir()) == ["generated.gif", "generated.mp4"]
    assert len(list(video_io.read_video(written / "generated.mp4"))) == (
        runs["config"].sample.num_frames)
    given = cli.resolve_run("sample", NO_CONFIG_FLAG, workdir=None, bundle_dir=None,
                            first="a.png", last="b.png")
    assert (given.first, given.last) == ("a.png", "b.png")


def test_main_py_samples_from_a_bundle_in_any_directory(runs, tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "main.py"), "--mode=sample",
                           f"--bundle={runs['out']}", "--num_frames=4"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    written = pathlib.Path("workdirs") / "demo_sample"
    assert done.stdout.splitlines()[-2:] == [f"wrote {written / 'generated.mp4'}",
                                             f"wrote {written / 'generated.gif'}"]
    assert len(list(video_io.read_video(tmp_path / written / "generated.mp4"))) == 4


def test_main_py_passes_config_overrides_to_an_evaluated_bundle(runs, tmp_path):
    """main.py hands --config.* of a bundle eval to the bundle's config (not to the default
    stage-1 config, which has no `evaluate` section): a field outside evaluate/sample is one
    error line."""
    done = subprocess.run([sys.executable, str(REPO / "main.py"), "--mode", "eval",
                           f"--bundle={runs['out']}", "--config.train.num_steps=3"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        "error: --config.train.num_steps cannot be set here: only fields of evaluate, sample, "
        "data.eval_split can."]


def _raises(match: str, function, *args, **kwargs) -> None:
    with pytest.raises(UserError, match=match) as error:
        function(*args, **kwargs)
    assert "\n" not in str(error.value)


def test_bundle_errors(runs, tmp_path):
    missing = tmp_path / "nowhere"
    _raises(f"no inference bundle in {missing} .*export one with `python -m ganime_jax.export "
            f".*--out={missing}`", cli.resolve_run, "sample", NO_CONFIG_FLAG, workdir=None,
            bundle_dir=str(missing), first=None, last=None)
    overridden = types.SimpleNamespace(present=0, override_values={"sample.seed": 1})
    _raises("--config.sample.seed needs --config=FILE", cli.resolve_run, "sample", overridden,
            workdir=None, bundle_dir=None, first=None, last=None)
    _raises("--bundle only applies to --mode=sample", cli.resolve_run, "sample", NO_CONFIG_FLAG,
            workdir=runs["gpt"], bundle_dir=str(runs["out"]), first=None, last=None)


def test_export_refuses_to_overwrite_unless_asked(runs):
    out, root = runs["out"], runs["root"]
    done = _export_cli(f"--gpt_workdir={runs['gpt']}", f"--out={out}")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {out} already exists; pass --overwrite to replace it or choose another --out."]
    _raises(f"{root} is not a bundle folder", export.export_bundle, runs["gpt"], root,
            overwrite=True)
    _raises("has only 2 clips of >= 5 frames; pass --example_clip < 2", export.export_bundle,
            runs["gpt"], root / "other", example_clip=2)
    _raises("the GPT trained on .*tiny_anime_tokens, encoded by checkpoint step 1 of "
            f"{runs['vqgan']}, not by the tokenizer in {runs['other_vqgan']}; pass "
            "--vqgan_workdir of the tokenizer", export.export_bundle, runs["gpt"], root / "other",
            vqgan_workdir=runs["other_vqgan"])
    before = (out / bundle.MANIFEST).read_text()
    export.export_bundle(runs["gpt"], out, vqgan_workdir=runs["vqgan"], overwrite=True,
                         command="again")
    manifest = json.loads((out / bundle.MANIFEST).read_text())
    assert manifest["command"] == "again" and manifest["example"]["clip"] == 0
    assert manifest["tokenizer_fingerprint"] == json.loads(before)["tokenizer_fingerprint"]
    assert sorted(p.name for p in root.iterdir()) == ["datasets", "demo", "gpt_run"]


def test_export_for_a_run_trained_on_a_larger_copy_of_its_dataset(runs, tmp_path, monkeypatch):
    """`heldout_dataset` points the bundle's eval and example at a dataset with the run's
    held-out clips (checked); `compute_dtype` sets the bundled GPT's activation dtype."""
    root = runs["config"].data.data_root
    own = tfds_io.variant_name(runs["config"].data.dataset, "clips")
    for name in ("copy", "other"):
        shutil.copytree(tfds_io.dataset_path(root, own), tfds_io.dataset_path(root, f"{name}_clips"))
    # Its tokenizer may come from a bundle, whose amended tokenizer config it keeps.
    tokenizer = shutil.copytree(runs["out"] / bundle.VQGAN_DIR, tmp_path / "tokenizer")
    amended = json.loads((tokenizer / checkpointing.CONFIG_FILENAME).read_text())
    amended["data"]["eval_split"] = "amended"
    (tokenizer / checkpointing.CONFIG_FILENAME).write_text(json.dumps(amended))
    out = export.export_bundle(runs["gpt"], tmp_path / "copy", heldout_dataset="copy",
                               compute_dtype="bfloat16", example_clip=EXAMPLE_CLIP,
                               vqgan_workdir=tokenizer)
    config = bundle.load_sample_run(out).config
    assert (config.data.dataset, config.model.gpt.dtype) == ("copy", "bfloat16")
    assert bundle.tokenizer_config(out / bundle.VQGAN_DIR).data.eval_split == "amended"
    assert json.loads((out / bundle.MANIFEST).read_text())["example"]["dataset"] == "copy"
    clip = sample.heldout_clips(runs["config"], config.sample.num_frames,
                                EXAMPLE_CLIP + 1)[EXAMPLE_CLIP]
    for name, frame in ((bundle.FIRST_FRAME, clip[0]), (bundle.LAST_FRAME, clip[-1])):
        np.testing.assert_array_equal(np.asarray(Image.open(out / name)), frame)
    open_split = tfds_io.open_split

    def one_clip_fewer(data_root, name, split):
        source = open_split(data_root, name, split)
        return [source[i] for i in range(len(source) - 1)] if name == "other_clips" else source

    monkeypatch.setattr(tfds_io, "open_split", one_clip_fewer)
    _raises("--heldout_dataset=other: its test split is not the one of the run's",
            export.export_bundle, runs["gpt"], tmp_path / "other", heldout_dataset="other")
    _raises("--heldout_dataset=missing: no missing_clips", export.export_bundle, runs["gpt"],
            tmp_path / "missing", heldout_dataset="missing")
    done = _export_cli(f"--gpt_workdir={runs['gpt']}", f"--out={tmp_path / 'half'}",
                       "--compute_dtype=float16")
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: compute dtype 'float16': choose one of ('float32', 'bfloat16') or leave it empty "
        "for the training run's."]
    assert not any((tmp_path / name).exists() for name in ("other", "missing", "half"))


def test_export_of_a_run_saved_before_the_sampling_fields(runs, tmp_path, monkeypatch):
    read_config = checkpointing.read_config

    def saved_before(workdir):
        config = read_config(workdir)
        for name in bundle.SAMPLE_FIELDS_SINCE:
            del config.sample[name]
        return config

    monkeypatch.setattr(checkpointing, "read_config", saved_before)
    out = export.export_bundle(runs["gpt"], tmp_path / "old", sample_settings=[
        "method=top_k", "selection=medoid"])
    sampling = bundle.load_sample_run(out).config.sample
    assert (sampling.candidates, sampling.selection, sampling.direction) == (1, "medoid",
                                                                             "forward")


def test_export_sets_how_the_bundle_samples(runs, tmp_path):
    out = tmp_path / "best_of"
    done = _export_cli(f"--gpt_workdir={runs['gpt']}", f"--out={out}", "--sample=method=top_k",
                       "--sample=candidates=3", "--sample=selection=medoid",
                       "--sample=direction=both")
    assert done.returncode == 0, done.stderr[-2000:]
    config_path = out / bundle.GPT_DIR / checkpointing.CONFIG_FILENAME
    stored = json.loads(config_path.read_text())
    assert (stored["sample"]["method"], stored["sample"]["candidates"],
            stored["sample"]["selection"], stored["sample"]["direction"]) == ("top_k", 3,
                                                                              "medoid", "both")
    assert bundle.load_sample_run(out).config.sample.candidates == 3
    # A bundle exported before the sampling fields existed samples as it did then, and
    # --mode=eval can still set them.
    for name in bundle.SAMPLE_FIELDS_SINCE:
        del stored["sample"][name]
    config_path.write_text(json.dumps(stored))
    config = bundle.load_sample_run(out).config
    assert (config.sample.candidates, config.sample.selection,
            config.sample.direction) == (1, "arrival", "forward")
    config_check.apply_overrides(config, ["--config.sample.selection=medoid"],
                                 bundle.EVAL_OVERRIDE_SECTIONS)
    assert config.sample.selection == "medoid"
    for setting, message in (("candidate=3", "no such field .*sample.candidates"),
                             ("candidates=2", "greedy decoding draws 2 identical clips"),
                             ("selection=nearest", "unknown candidate selection 'nearest'")):
        done = _export_cli(f"--gpt_workdir={runs['gpt']}", f"--out={tmp_path / 'bad'}",
                           f"--sample={setting}")
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
        assert re.search(message, done.stderr), done.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.skipif(not (bundle.DEMO_BUNDLE / bundle.GPT_DIR).is_dir(),
                    reason="the demo bundle is not in ganime_jax/assets/demo yet")
def test_zero_flag_main_py_with_the_shipped_demo(tmp_path):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(REPO / "main.py"), "--mode=sample"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    written = tmp_path / "workdirs" / "demo_sample"
    assert (written / "generated.mp4").stat().st_size > 0
    assert (written / "generated.gif").stat().st_size > 0
    print(f"zero-flag demo sample: {time.perf_counter() - start:.1f} s")


@pytest.mark.parametrize("args, message", [
    (["--out=strip.jpg"], "must name a .png file"),
    (["--out=strip.png", "--every=0"], "must be at least 1"),
    (["--out=strip.png"], "no inference bundle")])
def test_clip_strip_refuses_bad_input_in_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        clip_strip.main([f"--bundle={tmp_path / 'nothing'}", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "strip.png").exists()
