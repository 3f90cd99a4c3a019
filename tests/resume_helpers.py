"""Kill-and-resume through main.py, shared by the stage-1 and stage-2 training tests."""
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Callable

import numpy as np

from compile_flags import FAST_COMPILE_XLA_FLAGS
from ganime_jax.train.summary import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 600
POLL_S = 0.05


def main_command(config: str, workdir: pathlib.Path, *flags: str) -> list[str]:
    """`python main.py --config=<config> --workdir=<workdir> <flags>`."""
    return [sys.executable, str(REPO / "main.py"), f"--config={config}", f"--workdir={workdir}",
            *flags]


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _kill_after_first_checkpoint(command: list[str], env: dict[str, str],
                                 workdir: pathlib.Path) -> None:
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + TIMEOUT_S
    while not any(p.name.isdigit() for p in (workdir / "checkpoints").glob("*")):
        assert process.poll() is None, "the run ended before writing a checkpoint"
        assert time.time() < deadline
        time.sleep(POLL_S)
    process.send_signal(signal.SIGKILL)
    process.wait()


def check_killed_run_resumes(command: Callable[[pathlib.Path], list[str]],
                             tmp_path: pathlib.Path, num_steps: int,
                             keys: tuple[str, ...]) -> dict[int, dict[str, float]]:
    """Trains `command(workdir)` once without interruption; trains it again, SIGKILLed after its
    first checkpoint, and resumes it; asserts the `keys` metrics of every step agree.

    Returns the uninterrupted run's metrics by step.
    """
    # one device; the session's compilation cache
    env = {**os.environ, "XLA_FLAGS": FAST_COMPILE_XLA_FLAGS}
    reference = _run(command(tmp_path / "ref"), env)
    assert "trained" in reference.stdout

    workdir = tmp_path / "killed"
    _kill_after_first_checkpoint(command(workdir), env, workdir)
    killed_steps = sorted(read_metrics(workdir))
    assert killed_steps and killed_steps[-1] < num_steps, "the run was not interrupted"

    resumed = _run(command(workdir), env)
    assert "resumed from the checkpoint of step" in resumed.stdout
    expected, got = read_metrics(tmp_path / "ref"), read_metrics(workdir)
    assert sorted(got) == list(range(1, num_steps + 1))
    for step in range(1, num_steps + 1):
        for key in keys:
            np.testing.assert_allclose(got[step][key], expected[step][key], rtol=1e-6,
                                       err_msg=f"step {step} {key}")
    return expected
