"""Held-out quality against training time, from the `metrics.jsonl` of one or more runs: a PNG.

    python -m ganime_jax.evaluation.learning_curves --workdir=W1 [--workdir=W2 ...] \
        --out=curves.png [--metrics=psnr,lpips] [--x=wall|cpu|step] [--title=TEXT]

One panel per metric, one line per run, a point per evaluation (records of split "eval"; after
a resume the later record of a step wins), each run labelled with the data split its held-out
figures read (its config.json's `eval.split`; `data.eval_split` for runs older than that
field). The x axis is the run's summed wall-clock or CPU time in hours
(`train.loop.TrainingClock`, kept across resumes) or its step. So a reader sees what budget a
configuration needs and whether it was still improving when it stopped.
"""
import argparse
import pathlib
import sys
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ganime_jax.checkpointing import CONFIG_FILENAME, read_config_file
from ganime_jax.errors import UserError, exit_on_user_error
from ganime_jax.evaluation.report import PLOT_DPI, atomic_write
from ganime_jax.train.summary import METRICS_FILENAME, read_metrics

EVAL_SPLIT = "eval"
# x-axis choice -> (record key, divisor, axis label).
X_AXES = {"wall": ("wall_seconds", 3600.0, "training wall-clock time (hours)"),
          "cpu": ("cpu_seconds", 3600.0, "training CPU time (hours, all cores)"),
          "step": ("step", 1.0, "step")}
# Record keys that are bookkeeping, not quality: never plotted by default.
NOT_METRICS = {"step", "split", "wall_seconds", "cpu_seconds", "num_frames", "num_tokens"}
PANEL_SIZE = (4.5, 3.5)  # inches per panel


def eval_curves(workdir: str | pathlib.Path) -> list[dict]:
    """The eval records of a run in step order; a UserError where there are none."""
    path = pathlib.Path(workdir) / METRICS_FILENAME
    if not path.is_file():
        raise UserError(f"no {METRICS_FILENAME} in {workdir}: pass the workdir of a training "
                        "run (it writes one as it evaluates).")
    records = read_metrics(workdir, EVAL_SPLIT)
    if not records:
        raise UserError(f"{path} has no held-out evaluation yet (no records of split "
                        f"'{EVAL_SPLIT}'): train until config.eval.every steps have run.")
    return [records[step] for step in sorted(records)]


def held_out_split(workdir: str | pathlib.Path) -> str | None:
    """The data split a run's held-out figures read, from its config.json (None without one)."""
    path = pathlib.Path(workdir) / CONFIG_FILENAME
    if not path.is_file():
        return None
    config = read_config_file(path, "the run's config")
    return config.get("eval", {}).get("split") or config.get("data", {}).get("eval_split")


def default_metrics(runs: dict[str, list[dict]]) -> list[str]:
    """The numeric eval metrics every run recorded, in the first run's order."""
    first = next(iter(runs.values()))[0]
    return [key for key, value in first.items()
            if key not in NOT_METRICS and isinstance(value, (int, float))
            and all(key in records[0] for records in runs.values())]


def curves_figure(runs: dict[str, list[dict]], metrics: Sequence[str], x: str,
                  title: str = "") -> Figure:
    """One panel per metric with one line per run (label -> eval records)."""
    key, divisor, label = X_AXES[x]
    for name, records in runs.items():
        missing = [m for m in (key, *metrics) if any(m not in r for r in records)]
        if missing:
            hint = (" (trained before the clock was recorded: use --x=step)"
                    if key in missing else "")
            raise UserError(f"run {name} has eval records without {', '.join(missing)}{hint}; "
                            "choose --metrics from what every run recorded.")
    figure = Figure(figsize=(PANEL_SIZE[0] * len(metrics), PANEL_SIZE[1]), layout="constrained")
    for index, metric in enumerate(metrics):
        axes = figure.add_subplot(1, len(metrics), index + 1)
        for name, records in runs.items():
            axes.plot([r[key] / divisor for r in records], [r[metric] for r in records],
                      marker="o", markersize=3, label=name)
        axes.set_xlabel(label)
        axes.set_title(f"held-out {metric}")
        axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    return figure


def write_curves(workdirs: Sequence[str], out: str | pathlib.Path, metrics: Sequence[str] = (),
                 x: str = "wall", labels: Sequence[str] = (), title: str = "") -> pathlib.Path:
    """Reads every run, then writes the PNG atomically; returns its path."""
    if x not in X_AXES:
        raise UserError(f"--x={x!r} is unknown: use one of {', '.join(X_AXES)}.")
    if labels and len(labels) != len(workdirs):
        raise UserError(f"{len(labels)} labels for {len(workdirs)} workdirs: give one --label "
                        "per --workdir, or none.")
    out = pathlib.Path(out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out={out} must name a .png file.")
    names = list(labels) or [pathlib.Path(w).name for w in workdirs]
    if len(set(names)) != len(names):
        raise UserError(f"two runs share the label {names}: give --label for each --workdir.")
    splits = [held_out_split(workdir) for workdir in workdirs]
    runs = {f"{name} ({split})" if split else name: eval_curves(workdir)
            for name, workdir, split in zip(names, workdirs, splits)}
    metrics = list(metrics) or default_metrics(runs)
    if not metrics:
        raise UserError("the runs share no numeric eval metric: pass --metrics.")
    figure = curves_figure(runs, metrics, x, title)
    FigureCanvasAgg(figure)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda temp: figure.savefig(temp, format="png", dpi=PLOT_DPI))
    return out


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m ganime_jax.evaluation.learning_curves",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", action="append", required=True,
                        help="a training run's workdir (repeat to compare runs)")
    parser.add_argument("--label", action="append", default=[],
                        help="the legend name of each --workdir, in order (default: its name)")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--metrics", default="",
                        help="comma-separated eval metrics (default: all the runs share)")
    parser.add_argument("--x", default="wall", help=f"x axis: {', '.join(X_AXES)}")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        out = write_curves(args.workdir, args.out, [m for m in args.metrics.split(",") if m],
                           args.x, args.label, args.title)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
