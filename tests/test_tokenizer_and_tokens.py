"""Frozen tokenizer loading, the token dataset (built, resumed, checked) and its loader."""
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from ganime_jax import mesh as mesh_lib
from ganime_jax.data import pipeline, tfds_io
from ganime_jax.errors import UserError
from ganime_jax.tokenizer import load_tokenizer
from ganime_jax.train import token_dataset

REPO = pathlib.Path(__file__).resolve().parents[1]
DATASET = "tiny_anime"
ENCODE_BATCH, CLIPS_PER_SHARD = 16, 2


def _root_with_clips(stage1: dict, root: pathlib.Path) -> str:
    """A fresh data root that shares the session's clips dataset (tokens get written here)."""
    root.mkdir(parents=True, exist_ok=True)
    name = tfds_io.variant_name(DATASET, "clips")
    (root / name).symlink_to(pathlib.Path(stage1["data_root"]) / name)
    return str(root)


def _records(data_root: str, name: str, split: str) -> list[dict]:
    source = tfds_io.open_split(data_root, name, split)
    return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def tokenizer(stage1_workdirs):
    return load_tokenizer(stage1_workdirs["workdir"])


@pytest.fixture(scope="module")
def built(stage1_workdirs, tmp_path_factory) -> str:
    """A data root holding a token dataset built in shards of 2 clips over 8 devices."""
    root = _root_with_clips(stage1_workdirs, tmp_path_factory.mktemp("tokens") / "datasets")
    token_dataset.build_token_dataset(root, DATASET, stage1_workdirs["workdir"],
                                      batch_size=ENCODE_BATCH, clips_per_shard=CLIPS_PER_SHARD)
    return root


def test_missing_tokenizer_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist.*configs/vqgan"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no VQ-GAN checkpoint in .*empty; train stage 1.*main.py"):
        load_tokenizer(tmp_path / "empty")


def test_encode_decode_match_the_vqgan(tokenizer, stage1_workdirs):
    frames = _records(stage1_workdirs["data_root"], tfds_io.variant_name(DATASET, "clips"),
                      "train")[0]["frames"]
    tokens = np.asarray(tokenizer.encode(frames))
    assert tokens.shape == (len(frames), 32) and tokens.dtype == np.int32
    assert tokenizer.grid_shape == (4, 8) and tokenizer.frame_shape == (16, 32, 3)
    recon, aux = jax.jit(tokenizer.model.apply)({"params": tokenizer.params},
                                                frames.astype(np.float32) / 127.5 - 1.0)
    np.testing.assert_array_equal(tokens, np.asarray(aux["indices"]).reshape(len(frames), -1))
    expected = np.clip(np.round((np.asarray(recon) + 1.0) * 127.5), 0, 255)
    decoded = np.asarray(tokenizer.decode(tokens)).astype(np.float32)
    np.testing.assert_allclose(decoded, expected, atol=1.0)

    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1}))
    sharded = load_tokenizer(stage1_workdirs["workdir"], mesh)
    eight = np.concatenate([frames, frames])[:8]
    np.testing.assert_array_equal(np.asarray(sharded.encode(eight)),
                                  np.asarray(tokenizer.encode(eight)))
    np.testing.assert_array_equal(np.asarray(sharded.encode(frames[:3])), tokens[:3])
    with pytest.raises(UserError, match="do not match"):
        tokenizer.encode(frames[:, :8])


def test_token_dataset_equals_direct_encoding(built, tokenizer, stage1_workdirs):
    clips_name, name = tfds_io.variant_name(DATASET, "clips"), tfds_io.variant_name(DATASET, "tokens")
    summary = tfds_io.dataset_summary(built, name)
    assert summary["kind"] == "tokens" and summary["dtype"] == "int16"
    assert tfds_io.read_metadata(built, name)["tokenizer"]["fingerprint"] == tokenizer.fingerprint()
    for split in ("train", "test"):
        clips = sorted(_records(stage1_workdirs["data_root"], clips_name, split),
                       key=lambda r: (r["source"], r["shot_index"], r["clip_index"]))
        token_clips = sorted(_records(built, name, split),
                             key=lambda r: (r["source"], r["shot_index"], r["clip_index"]))
        assert len(clips) == len(token_clips) > 0
        for clip, record in zip(clips, token_clips):
            assert record["tokens"].dtype == np.int16
            assert record["n_frames"] == clip["n_frames"] == len(record["tokens"])
            assert (record["source"], record["shot_index"]) == (clip["source"], clip["shot_index"])
            np.testing.assert_array_equal(record["tokens"],
                                          np.asarray(tokenizer.encode(clip["frames"])))
    assert not (pathlib.Path(built) / f".{name}.staging").exists()


def test_interrupted_build_resumes_from_its_shards(stage1_workdirs, built, tmp_path, monkeypatch):
    root = _root_with_clips(stage1_workdirs, tmp_path / "datasets")
    name = tfds_io.variant_name(DATASET, "tokens")

    def crash(*args, **kwargs):
        raise RuntimeError("killed while writing")

    with monkeypatch.context() as patch:
        patch.setattr(token_dataset.tfds_io, "write_dataset", crash)
        with pytest.raises(RuntimeError, match="killed"):
            token_dataset.build_token_dataset(root, DATASET, stage1_workdirs["workdir"],
                                              batch_size=ENCODE_BATCH,
                                              clips_per_shard=CLIPS_PER_SHARD)
    staged = sorted(p.name for p in (tmp_path / "datasets" / f".{name}.staging").glob("*.npz"))
    assert staged == ["test-00000.npz", "train-00000.npz", "train-00001.npz"]
    assert not tfds_io.dataset_exists(root, name)

    encoded = []
    monkeypatch.setattr(token_dataset, "encode_clips",
                        lambda *args: encoded.append(1) or pytest.fail("re-encoded a shard"))
    token_dataset.build_token_dataset(root, DATASET, stage1_workdirs["workdir"],
                                      batch_size=ENCODE_BATCH, clips_per_shard=CLIPS_PER_SHARD)
    assert not encoded
    for split in ("train", "test"):
        for a, b in zip(_records(root, name, split), _records(built, name, split)):
            np.testing.assert_array_equal(a["tokens"], b["tokens"])


def test_existing_dataset_of_another_tokenizer_is_refused(built, stage1_workdirs):
    token_dataset.ensure_token_dataset(built, DATASET, stage1_workdirs["workdir"])
    with pytest.raises(UserError, match="another tokenizer.*data_prep.tokens"):
        token_dataset.ensure_token_dataset(built, DATASET, stage1_workdirs["other_workdir"])


def test_command_line_builds_the_same_dataset(stage1_workdirs, built, tmp_path):
    root = _root_with_clips(stage1_workdirs, tmp_path / "datasets")
    result = subprocess.run(
        [sys.executable, "-m", "data_prep.tokens",
         f"--tokenizer_workdir={stage1_workdirs['workdir']}", f"--data_root={root}",
         f"--dataset={DATASET}", "--batch_size=4", "--clips_per_shard=3"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "XLA_FLAGS": ""})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "wrote" in result.stdout
    name = tfds_io.variant_name(DATASET, "tokens")
    for a, b in zip(_records(root, name, "train"), _records(built, name, "train")):
        np.testing.assert_array_equal(a["tokens"], b["tokens"])


def test_tokens_loader_crops_and_pads(built):
    max_frames = 7
    name = tfds_io.variant_name(DATASET, "tokens")
    records = [r["tokens"] for r in _records(built, name, "train")]
    options = pipeline.LoaderOptions(seed=0, shuffle=False, num_epochs=1, read_threads=0)
    loader = pipeline.tokens_loader(built, name, "train", global_batch_size=len(records),
                                    max_frames=max_frames, min_frames=4, options=options)
    batch = next(iter(loader))
    assert batch["tokens"].shape == (len(records), max_frames, 32)
    assert batch["tokens"].dtype == np.int32
    assert sorted(batch["n_frames"]) == sorted(min(len(r), max_frames) for r in records)
    assert max(len(r) for r in records) > max_frames > min(len(r) for r in records)
    for clip, n in zip(batch["tokens"], batch["n_frames"]):
        windows = [full[s:s + n] for full in records for s in range(len(full) - n + 1)]
        assert any(np.array_equal(clip[:n], w) for w in windows)
        assert not clip[n:].any()
    with pytest.raises(UserError, match="holds tokens, but this loader needs clips"):
        pipeline.clips_loader(built, name, "train", global_batch_size=4, max_frames=5,
                              min_frames=4, options=options)
