"""Two CPU processes on localhost as one run (`main.py --multihost`, gloo collectives).

Each process has 2 fake devices; the 1-process references have 4, so every run uses the same
(data=2, fsdp=2) mesh and the same global batch. The 2-process runs must train on exactly what
the 1-process run trains on, write checkpoints a 1-process run resumes, and survive SIGKILL.
"""
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from ganime_jax.train.summary import read_metrics
from compile_flags import FAST_COMPILE_XLA_FLAGS
from resume_helpers import REPO, main_command

pytestmark = pytest.mark.costly(seconds=260)

PROCESSES = 2
DEVICES_PER_PROCESS = 2
TIMEOUT_S = 600
POLL_S = 0.05
# Adam turns the rounding noise of gradients that are zero in theory into full +-lr steps, so
# runs that sum in another order part after a step or two; a large eps makes the update linear
# in small gradients (as in test_vqgan_train's device-count test).
MESH_FLAGS = ("--config.mesh.data=-1", "--config.mesh.fsdp=2", "--config.optimizer.eps=1.0")
RTOL = 2e-5  # all-reduces over gloo sum in another order than one process's


def _env(devices: int) -> dict[str, str]:
    """`devices` fake CPU devices; the session's compilation cache (conftest.py)."""
    flags = f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE_XLA_FLAGS}"
    return {**os.environ, "XLA_FLAGS": flags,
            "JAX_PLATFORMS": "cpu"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(command: list[str]) -> list[subprocess.Popen]:
    """The processes of one `--multihost` run, started by hand (no cluster manager)."""
    port = _free_port()
    return [subprocess.Popen(
        [*command, "--multihost", f"--coordinator_address=127.0.0.1:{port}",
         f"--num_processes={PROCESSES}", f"--process_id={index}"],
        cwd=REPO, env=_env(DEVICES_PER_PROCESS), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for index in range(PROCESSES)]


def _finish(processes: list[subprocess.Popen]) -> list[str]:
    """Every process's stdout once all have exited with status 0."""
    try:
        outputs = [p.communicate(timeout=TIMEOUT_S) for p in processes]
    finally:
        for p in processes:
            p.kill()
    for index, (p, (_, stderr)) in enumerate(zip(processes, outputs)):
        assert p.returncode == 0, f"process {index}: {stderr[-3000:]}"
    return [stdout for stdout, _ in outputs]


def _run_one_process(command: list[str]) -> str:
    result = subprocess.run(command, cwd=REPO, env=_env(PROCESSES * DEVICES_PER_PROCESS),
                            capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _assert_same_losses(got: dict, expected: dict, steps, keys: tuple[str, ...]) -> None:
    for step in steps:
        assert {k for k in keys if k in got[step]} == {k for k in keys if k in expected[step]}
        for key in (k for k in keys if k in expected[step]):
            np.testing.assert_allclose(got[step][key], expected[step][key], rtol=RTOL,
                                       err_msg=f"step {step} {key}")


def test_vqgan_two_processes_train_as_one_and_their_checkpoint_resumes_in_one(tmp_path):
    # The discriminator from step 0: one compiled training step per run (with a later start,
    # each process compiles two). Codes restart at steps 2 and 4, checkpoints at 2 and 4.
    num_steps, resume_step = 4, 2

    def command(workdir: pathlib.Path) -> list[str]:
        return main_command("configs/vqgan_tiny.py", workdir, *MESH_FLAGS,
                            f"--config.data.data_root={tmp_path / 'datasets'}",
                            f"--config.train.num_steps={num_steps}", "--config.loss.disc_start=0")

    # The 2-process run comes first: process 0 builds the embedded dataset while 1 waits for it.
    outputs = _finish(_start(command(tmp_path / "two")))
    # process 0 alone reports, logs and writes the config
    assert ["trained vqgan" in out for out in outputs] == [True, False]
    assert "trained vqgan" in _run_one_process(command(tmp_path / "one"))
    expected = read_metrics(tmp_path / "one")
    got = read_metrics(tmp_path / "two")
    assert sorted(got) == list(range(1, num_steps + 1))
    keys = ("loss", "rec_loss", "l1", "lpips", "d_loss", "codes_restarted")
    _assert_same_losses(got, expected, range(1, num_steps + 1), keys)
    eval_one, eval_two = (read_metrics(tmp_path / d, "eval")[num_steps] for d in ("one", "two"))
    np.testing.assert_allclose(eval_two["psnr"], eval_one["psnr"], rtol=RTOL)
    assert list((tmp_path / "two" / "tensorboard").iterdir())  # image grids were written

    # The 2-process checkpoint of step 2, resumed by one process, finishes like the reference.
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "two" / "checkpoints" / str(resume_step),
                    resumed / "checkpoints" / str(resume_step))
    output = _run_one_process(command(resumed))
    assert f"resumed from the checkpoint of step {resume_step}" in output
    _assert_same_losses(read_metrics(resumed), expected, range(resume_step + 1, num_steps + 1),
                        keys)


def _kill_all_after_first_checkpoint(processes: list[subprocess.Popen],
                                     workdir: pathlib.Path) -> None:
    deadline = time.time() + TIMEOUT_S
    try:
        while not any(p.name.isdigit() for p in (workdir / "checkpoints").glob("*")):
            assert all(p.poll() is None for p in processes), "a process ended before a checkpoint"
            assert time.time() < deadline
            time.sleep(POLL_S)
    finally:
        for p in processes:
            p.send_signal(signal.SIGKILL)
            p.wait()


def test_gpt_two_processes_killed_and_resumed_train_as_one(tmp_path, stage1_workdirs):
    num_steps = 8  # teacher-forced to step 4, own predictions after; samples and eval at 4, 8

    def command(workdir: pathlib.Path) -> list[str]:
        return main_command("configs/gpt_tiny.py", workdir, *MESH_FLAGS,
                            f"--config.data.data_root={stage1_workdirs['data_root']}",
                            f"--config.tokenizer.workdir={stage1_workdirs['workdir']}",
                            f"--config.train.num_steps={num_steps}")

    assert "trained gpt" in _run_one_process(command(tmp_path / "one"))

    workdir = tmp_path / "two"
    _kill_all_after_first_checkpoint(_start(command(workdir)), workdir)
    assert max(read_metrics(workdir), default=0) < num_steps, "the run was not interrupted"
    outputs = _finish(_start(command(workdir)))
    assert "resumed from the checkpoint of step" in outputs[0]
    expected, got = read_metrics(tmp_path / "one"), read_metrics(workdir)
    assert sorted(got) == list(range(1, num_steps + 1))
    _assert_same_losses(got, expected, range(1, num_steps + 1), ("loss", "accuracy"))
    assert [got[s]["own_predictions"] for s in (1, num_steps)] == [0.0, 1.0]
    eval_one, eval_two = (read_metrics(d, "eval")[num_steps] for d in (tmp_path / "one", workdir))
    for key in ("teacher_forced_accuracy", "own_accuracy"):
        np.testing.assert_allclose(eval_two[key], eval_one[key], rtol=RTOL, err_msg=key)
    assert sorted(p.name for p in (workdir / "samples").iterdir()) == [
        "train_step_00000004.gif", "train_step_00000008.gif"]


@pytest.mark.parametrize("flags, message", [
    (("--num_processes=2",), "need --multihost"),
    (("--multihost",), "could not join the run"),  # no cluster manager here, no coordinator
    (("--multihost", "--coordinator_address=127.0.0.1:1", "--num_processes=2",
      "--process_id=2"), "process id must be in [0, 2)"),
])
def test_multihost_flag_errors_are_one_line(tmp_path, flags, message):
    _check_one_line_error(main_command("configs/vqgan_tiny.py", tmp_path / "w", *flags),
                          _env(1), message)


def test_multihost_reads_the_process_count_and_id_from_jax_variables(tmp_path):
    env = {**_env(1), "JAX_COORDINATOR_ADDRESS": "127.0.0.1:1",
           "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "5"}
    _check_one_line_error(main_command("configs/vqgan_tiny.py", tmp_path / "w", "--multihost"),
                          env, "process id must be in [0, 2), got 5")


def _check_one_line_error(command: list[str], env: dict[str, str], message: str) -> None:
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=TIMEOUT_S)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
