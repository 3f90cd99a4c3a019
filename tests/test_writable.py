"""`writable.staged_folder`: an output folder appears whole or not at all."""
import pytest

from ganime_jax import writable


def test_a_staged_folder_replaces_the_old_one_only_when_the_block_succeeds(tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with writable.staged_folder(out) as staging:
            (staging / "new.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    with writable.staged_folder(out) as staging:
        (staging / "new.txt").write_text("new")
        assert not (out / "new.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]


def test_leftovers_of_an_interrupted_run_are_removed_by_the_next(tmp_path):
    out = tmp_path / "converted"
    for leftover in (".converted.tmp-abc", ".converted.old-def"):
        (tmp_path / leftover).mkdir()
        (tmp_path / leftover / "f").write_text("x")
    (tmp_path / ".other.tmp-abc").mkdir()  # another output's staging is not touched
    with writable.staged_folder(out) as staging:
        (staging / "f").write_text("y")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-abc", "converted"]
    assert (out / "f").read_text() == "y"
