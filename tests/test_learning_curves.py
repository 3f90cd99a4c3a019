"""Learning curves from metrics.jsonl: what is plotted, resumed runs, the CLI and its errors."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from ganime_jax.errors import UserError
from ganime_jax.evaluation import learning_curves

REPO = pathlib.Path(__file__).resolve().parent.parent


def _run(path: pathlib.Path, evals: list[tuple[int, float, float]], extra: str = "") -> str:
    """A workdir whose metrics.jsonl holds train records and (step, wall_seconds, psnr) evals."""
    path.mkdir(parents=True)
    lines = []
    for step, wall, psnr in evals:
        lines.append(json.dumps({"step": step, "split": "train", "loss": 1.0 / step,
                                 "wall_seconds": wall - 1, "cpu_seconds": 2 * wall}))
        lines.append(json.dumps({"step": step, "split": "eval", "psnr": psnr, "lpips": 1 / psnr,
                                 "num_frames": 256.0, "wall_seconds": wall,
                                 "cpu_seconds": 2 * wall}))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return str(path)


def test_each_run_is_a_line_against_hours_and_a_resume_keeps_the_later_record(tmp_path,
                                                                               monkeypatch):
    # Run a was killed after its step-1000 eval and resumed from step 500: step 1000 was
    # evaluated again, later; the killed run's last line is cut short.
    a = _run(tmp_path / "a", [(500, 1800, 15.0), (1000, 3600, 16.0), (1000, 4000, 17.0),
                              (1500, 5400, 18.0)], extra='{"step": 2000, "spl')
    b = _run(tmp_path / "b", [(500, 900, 14.0), (1000, 7200, 19.0)])
    runs = {"a": learning_curves.eval_curves(a), "b": learning_curves.eval_curves(b)}
    assert learning_curves.default_metrics(runs) == ["psnr", "lpips"]
    figure = learning_curves.curves_figure(runs, ["psnr", "lpips"], "wall", "demo")
    psnr_panel, lpips_panel = figure.axes
    (ax, ay), (bx, by) = [line.get_data() for line in psnr_panel.get_lines()]
    np.testing.assert_allclose(ax, [0.5, 4000 / 3600, 1.5])
    np.testing.assert_allclose(ay, [15.0, 17.0, 18.0])
    np.testing.assert_allclose(bx, [0.25, 2.0])
    np.testing.assert_allclose(lpips_panel.get_lines()[1].get_data()[1], [1 / 14, 1 / 19])
    steps = learning_curves.curves_figure(runs, ["psnr"], "step").axes[0].get_lines()[1]
    np.testing.assert_allclose(steps.get_data()[0], [500, 1000])

    # Each run is labelled with the split its held-out figures read: eval.split, or
    # data.eval_split for a run older than that field; nothing without a config.json.
    (pathlib.Path(a) / "config.json").write_text(json.dumps(
        {"data": {"eval_split": "test"}, "eval": {"split": "validation"}}))
    (pathlib.Path(b) / "config.json").write_text(json.dumps({"data": {"eval_split": "test"}}))
    assert [learning_curves.held_out_split(w) for w in (a, b, tmp_path)] == [
        "validation", "test", None]
    drawn = []
    figure_of = learning_curves.curves_figure
    monkeypatch.setattr(learning_curves, "curves_figure",
                        lambda runs, *args: drawn.append(list(runs)) or figure_of(runs, *args))
    out = learning_curves.write_curves([a, b], tmp_path / "plots" / "curves.png",
                                       labels=["run a", "run b"], x="cpu")
    assert drawn == [["run a (validation)", "run b (test)"]]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["curves.png"]


def test_errors_name_the_problem(tmp_path):
    run = _run(tmp_path / "run", [(500, 1800, 15.0)])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "train"}) + "\n")
    old = tmp_path / "old"
    old.mkdir()
    (old / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "eval", "psnr": 1.0}))
    cases = [(dict(workdirs=[str(tmp_path / "none")]), "no metrics.jsonl in"),
             (dict(workdirs=[str(empty)]), "no held-out evaluation yet"),
             (dict(workdirs=[str(old)]), "without wall_seconds .*use --x=step"),
             (dict(workdirs=[run], metrics=["fvd"]), "without fvd"),
             (dict(workdirs=[run], x="minutes"), "--x='minutes' is unknown"),
             (dict(workdirs=[run, run]), "share the label"),
             (dict(workdirs=[run], labels=["a", "b"]), "2 labels for 1 workdirs")]
    for kwargs, message in cases:
        with pytest.raises(UserError, match=message):
            learning_curves.write_curves(out=tmp_path / "c.png", **kwargs)
    with pytest.raises(UserError, match="must name a .png"):
        learning_curves.write_curves([run], tmp_path / "c.jpg")
    assert not (tmp_path / "c.png").exists()


def test_the_command_line_writes_the_plot_or_one_error_line(tmp_path):
    run = _run(tmp_path / "run", [(500, 1800, 15.0), (1000, 3600, 16.0)])
    command = [sys.executable, "-m", "ganime_jax.evaluation.learning_curves",
               f"--workdir={run}", f"--out={tmp_path / 'c.png'}", "--metrics=psnr"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"wrote {tmp_path / 'c.png'}"
    failed = subprocess.run(command[:3] + [f"--workdir={tmp_path}", f"--out={tmp_path / 'd.png'}"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines() == [
        f"error: no metrics.jsonl in {tmp_path}: pass the workdir of a training run (it writes "
        "one as it evaluates)."]
