"""Metrics (TensorBoard + a JSON-lines file) and image grids, written by process 0 only."""
import json
import pathlib
import sys

import numpy as np

from ganime_jax import multihost

METRICS_FILENAME = "metrics.jsonl"


def _import_summary_writer() -> type:
    """tensorboardX's SummaryWriter, imported without PyTorch unless something already has.

    tensorboardX imports torch (2-3 s) only to accept torch tensors; we pass numpy arrays. So
    that every training run does not pay for it, torch is hidden during that one import.
    """
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter


class MetricWriter:
    """TensorBoard scalars/images plus `metrics.jsonl`; a no-op on every process but the first.

    The JSON-lines file gets one record per call, {"step", "split", metrics...}; after a resume
    the steps since the last checkpoint appear again, and the later record is the one to keep.
    """

    def __init__(self, workdir: str | pathlib.Path):
        self._writer = None
        self._jsonl = None
        if multihost.is_main_process():
            SummaryWriter = _import_summary_writer()
            workdir = pathlib.Path(workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(str(workdir / "tensorboard"))
            self._jsonl = open(workdir / METRICS_FILENAME, "a", encoding="utf-8")

    def scalars(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        if self._writer is None:
            return
        for name, value in values.items():
            self._writer.add_scalar(f"{prefix}/{name}", value, step)
        self._jsonl.write(json.dumps({"step": step, "split": prefix, **values}) + "\n")
        self._jsonl.flush()

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        """`image` is (H, W, 3) uint8."""
        if self._writer is not None:
            self._writer.add_image(name, image, step, dataformats="HWC")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._jsonl.close()


def read_metrics(workdir: str | pathlib.Path, split: str = "train") -> dict[int, dict]:
    """step -> the last record written for it (later records win, as after a resume)."""
    records = {}
    path = pathlib.Path(workdir) / METRICS_FILENAME
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the last line of a killed run may be cut short
            continue
        if record.get("split") == split:
            records[record["step"]] = record
    return records


def image_grid(rows: list[np.ndarray], pad: int = 2) -> np.ndarray:
    """Stacks rows of images (each (N, H, W, 3) uint8) into one padded (H', W', 3) grid."""
    rows = [np.pad(r, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=255) for r in rows]
    return np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
