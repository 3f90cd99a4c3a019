"""The training clock: wall and CPU seconds summed over the sittings of a resumed run."""
import json
import time

from ganime_jax.train.loop import TrainingClock
from ganime_jax.train.summary import METRICS_FILENAME


def _write(workdir, records):
    with open(workdir / METRICS_FILENAME, "w", encoding="utf-8") as file:
        for record in records:
            file.write(json.dumps(record) + "\n")


def test_a_fresh_run_starts_at_zero(tmp_path):
    clock = TrainingClock(tmp_path, 0)
    start = time.process_time()
    while time.process_time() - start < 0.05:  # burn a little CPU
        pass
    reading = clock.read()
    assert 0.0 < reading["wall_seconds"] < 5.0
    assert 0.04 < reading["cpu_seconds"] < 5.0


def test_a_resumed_run_continues_from_its_checkpoint_step(tmp_path):
    _write(tmp_path, [
        {"step": 50, "split": "train", "wall_seconds": 100.0, "cpu_seconds": 180.0},
        {"step": 100, "split": "train", "wall_seconds": 200.0, "cpu_seconds": 390.0},
        # Steps after the checkpoint (100) were lost with the killed sitting: not counted.
        {"step": 150, "split": "train", "wall_seconds": 300.0, "cpu_seconds": 600.0},
        {"step": 100, "split": "eval", "wall_seconds": 999.0, "cpu_seconds": 999.0},
    ])
    reading = TrainingClock(tmp_path, 100).read()
    assert 200.0 <= reading["wall_seconds"] < 205.0
    assert 390.0 <= reading["cpu_seconds"] < 395.0
    # A run resumed before any timed record starts from zero.
    assert TrainingClock(tmp_path, 20).read()["wall_seconds"] < 5.0
