"""Evaluation results across runs: mean and spread, a markdown table, JSON, a quality plot.

A method's runs are the seeds it was generated with (one run for deterministic methods). The
spread is the sample standard deviation over runs (ddof 1), absent for a single run.
Every file is written under a temporary name and renamed into place.
"""
import json
import os
import pathlib
from typing import Any, Callable

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ganime_jax.data.video_io import sibling_temp_path

JSON_NAME = "results.json"
TABLE_NAME = "results.md"
PLOT_NAME = "quality_by_position.png"
# Table columns: (result key, header, format of a value).
COLUMNS = (("fvd", "FVD ↓", "{:.1f}"), ("kvd", "KVD ↓", "{:.4g}"),
           ("psnr", "PSNR ↑ (dB)", "{:.2f}"), ("ssim", "SSIM ↑", "{:.3f}"),
           ("lpips", "LPIPS ↓", "{:.3f}"))
DISTANCES = ("fvd", "kvd")  # columns only when the run computed I3D features
PLOTTED = (("psnr", "PSNR (dB)"), ("lpips", "LPIPS"))
PLOT_DPI = 120


def _spread(values: np.ndarray) -> Any:
    return np.std(values, axis=0, ddof=1) if len(values) > 1 else None


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, spread, min and max over runs of every scalar metric, and the mean and spread of
    the per-position curves."""
    out: dict[str, Any] = {}
    for key in (key for key, _, _ in COLUMNS if key in runs[0]):
        values = np.array([run[key] for run in runs], np.float64)
        spread = _spread(values)
        out[key] = {"mean": float(values.mean()),
                    "std": None if spread is None else float(spread),
                    "min": float(values.min()), "max": float(values.max())}
    out["per_position"] = {}
    for key in runs[0]["per_position"]:
        curves = np.array([run["per_position"][key] for run in runs], np.float64)
        spread = _spread(curves)
        out["per_position"][key] = {"mean": curves.mean(axis=0).tolist(),
                                    "std": None if spread is None else spread.tolist()}
    return out


def _cell(stats: dict[str, Any] | None, fmt: str) -> str:
    if stats is None:
        return "-"
    text = fmt.format(stats["mean"])
    if stats["std"] is None:
        return text
    # The spread to the mean's last digit, so that both read on the same scale.
    decimals = len(text.partition(".")[2]) if "e" not in text else 2
    return f"{text} ± {stats['std']:.{decimals}f}"


def markdown_table(results: dict[str, Any]) -> str:
    """The methods as rows, the metrics as columns (mean ± spread), then the notes."""
    columns = [c for c in COLUMNS if results["fvd"] or c[0] not in DISTANCES]
    lines = ["| method | runs | " + " | ".join(header for _, header, _ in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for method in results["methods"].values():
        stats = method["aggregate"]
        cells = [_cell(stats.get(key), fmt) for key, _, fmt in columns]
        lines.append(f"| {method['label']} | {len(method['runs'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + [f"- {note}" for note in results["notes"]]) + "\n"


def atomic_write(path: pathlib.Path, write: Callable[[str], None]) -> None:
    """`write(temporary_name)`, then the temporary renamed to `path` (removed on failure)."""
    temp = sibling_temp_path(path)
    try:
        write(temp)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def _write_text(path: pathlib.Path, text: str) -> None:
    def write(temp: str) -> None:
        with open(temp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write(path, write)


def quality_plot(results: dict[str, Any]) -> Figure:
    """PSNR and LPIPS against frame position, one line per method (a band of ± one spread
    where a method has several runs)."""
    figure = Figure(figsize=(10, 4.5), layout="constrained")
    num_frames = results["num_frames"]
    positions = np.arange(1, num_frames - 1)
    for index, (key, title) in enumerate(PLOTTED):
        axes = figure.add_subplot(1, len(PLOTTED), index + 1)
        for method in results["methods"].values():
            curve = method["aggregate"]["per_position"][key]
            mean = np.asarray(curve["mean"])
            line, = axes.plot(positions, mean, marker=".", label=method["label"])
            if curve["std"] is not None:
                std = np.asarray(curve["std"])
                axes.fill_between(positions, mean - std, mean + std, alpha=0.2,
                                  color=line.get_color())
        axes.set_xlabel(f"frame position (0 = first, {num_frames - 1} = last; both given)")
        axes.set_title(title)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=len(labels),
                  fontsize="small")
    figure.suptitle(f"{results['num_clips']} held-out clips of {num_frames} frames, "
                    f"{results['dataset']}/{results['split']}")
    return figure


def write_report(results: dict[str, Any],
                 output_dir: str | pathlib.Path) -> dict[str, pathlib.Path]:
    """Writes results.json, results.md and quality_by_position.png; returns their paths."""
    folder = pathlib.Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / JSON_NAME, "table": folder / TABLE_NAME, "plot": folder / PLOT_NAME}
    _write_text(paths["json"], json.dumps(results, indent=1, allow_nan=False) + "\n")
    _write_text(paths["table"], markdown_table(results))
    figure = quality_plot(results)
    FigureCanvasAgg(figure)
    atomic_write(paths["plot"], lambda temp: figure.savefig(temp, format="png", dpi=PLOT_DPI))
    return paths
