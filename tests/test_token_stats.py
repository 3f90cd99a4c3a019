"""evaluation/token_stats: the statistics, on stand-in tokenizers whose locality is known."""
import dataclasses

import numpy as np
import pytest

from ganime_jax.evaluation import token_stats

GRID = (4, 4)
PATCH = 4


@dataclasses.dataclass
class PatchMeanTokenizer:
    """Token = the patch's mean pixel level (local); with `global_shift`, plus the column of the
    frame's brightness centroid (every token depends on the whole frame)."""
    global_shift: bool
    grid_shape: tuple = GRID
    num_embeddings: int = 512
    step: int = 7

    def encode(self, frames: np.ndarray) -> np.ndarray:
        patches = token_stats._patches(frames, self.grid_shape).astype(np.float64)
        tokens = patches.mean(axis=-1)
        if self.global_shift:
            columns = frames.astype(np.float64).sum(axis=(1, 3))  # (B, W)
            centroid = (columns * np.arange(columns.shape[1])).sum(1) / columns.sum(1)
            tokens = tokens + 1000 * centroid[:, None, None]
        return np.round(tokens).astype(np.int32).reshape(len(frames), -1)


def _clips() -> np.ndarray:
    """Black clips with one grey square moving left by one patch a frame (away from the
    painted corner in the first)."""
    clips = np.zeros((2, 3, GRID[0] * PATCH, GRID[1] * PATCH, 3), np.uint8)
    for t in range(3):
        clips[:, t, 8:12, 8 - 4 * t:12 - 4 * t] = 100
    return clips


def test_local_tokens_keep_unchanged_patches_and_change_only_near_a_paint():
    stats = token_stats.token_stats(PatchMeanTokenizer(global_shift=False), _clips())
    assert stats["unchanged_patch_token_kept"] == 1.0
    # 16 positions; per step 2 patches change (the square leaves one, enters the next)
    assert np.isclose(stats["unchanged_patch_share"], 14 / 16)
    assert np.isclose(stats["copy_previous_agreement"], 14 / 16)
    assert stats["flat_patch_share"] == 1.0 and stats["codes_on_flat_patches"] == 2
    assert stats["painted_corner_tokens_changed"] == 1.0 and stats["far_tokens_changed"] == 0.0
    assert stats["distinct_codes"] == 2 and stats["tokenizer_step"] == 7


def test_tokens_that_see_the_whole_frame_are_caught():
    stats = token_stats.token_stats(PatchMeanTokenizer(global_shift=True), _clips())
    assert stats["unchanged_patch_token_kept"] < 0.5
    assert stats["far_tokens_changed"] > 0


def test_bad_counts_are_one_error_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        token_stats.main([f"--tokenizer_workdir={tmp_path}", "--num_frames=1"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--num_frames=1" in err and len(err.splitlines()) == 1
