"""main.py turns bad flags and configs into one-line errors (exit status 2), no traceback."""
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(*args: str, cwd: pathlib.Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def _assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def _config_file(tmp_path: pathlib.Path, body: str) -> str:
    path = tmp_path / "my_config.py"
    path.write_text("from configs import vqgan_tiny\n\n\ndef get_config():\n"
                    "    config = vqgan_tiny.get_config()\n" + body + "    return config\n")
    return str(path)


def test_override_typo_names_the_close_field():
    _assert_one_line_error(_run("--config.train.num_step=3"), "num_steps")


def test_override_of_wrong_type():
    _assert_one_line_error(_run("--config.train.num_steps=many"), "num_steps", "many")


def test_missing_config_file():
    _assert_one_line_error(_run("--config=configs/no_such_config.py"), "no_such_config.py")


def test_default_config_is_found_from_another_directory(tmp_path):
    # The override is checked against configs/vqgan_demo.py beside main.py, not under the cwd.
    _assert_one_line_error(_run("--config.train.num_step=3", cwd=tmp_path), "num_steps")


def test_config_file_with_a_syntax_error(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("def get_config(:\n")
    _assert_one_line_error(_run(f"--config={path}"), "broken.py", "line 1")


@pytest.mark.parametrize("body,fragment", [
    ("    del config.train['num_steps']\n", "missing the required field `train.num_steps`"),
    ("    config.train.num_step = 3\n", "unknown field `train.num_step`"),
    ("    config.data.dataset = None\n", "`data.dataset` is required"),
])
def test_config_file_field_problems(tmp_path, body, fragment):
    _assert_one_line_error(_run(f"--config={_config_file(tmp_path, body)}"), fragment)


def test_unknown_flag_and_stray_argument():
    _assert_one_line_error(_run("--no_such_flag=1"), "no_such_flag")
    _assert_one_line_error(_run("train"), "unexpected arguments")


@pytest.mark.parametrize("flags,fragment", [
    (("--config.train.batch_size=7",), "batch size 7"),
    (("--config.model.encoder_local=true", "--config.model.encoder_per_patch=true"),
     "choose one"),
])
def test_stage1_setting_that_cannot_train_fails_before_the_dataset_is_built(tmp_path, flags,
                                                                            fragment):
    data_root = tmp_path / "datasets"
    _assert_one_line_error(_run("--config=configs/vqgan_tiny.py", f"--workdir={tmp_path / 'w'}",
                                f"--config.data.data_root={data_root}", *flags), fragment)
    assert not data_root.exists()


def test_held_out_split_missing_from_the_dataset_fails_before_it_is_built(tmp_path):
    data_root = tmp_path / "datasets"
    _assert_one_line_error(_run("--config=configs/vqgan_tiny.py", f"--workdir={tmp_path / 'w'}",
                                f"--config.data.data_root={data_root}",
                                "--config.eval.split=validation"),
                           "config.eval.split='validation'", "only the splits ['train', 'test']")
    assert not data_root.exists()
