"""A run's training log: ``log.csv`` (one row per logged step or evaluation) and TensorBoard scalars.

Only the main process writes; a resumed run first drops the rows written after its checkpoint, so the log
reads as if the run had never stopped.
"""
from __future__ import annotations

import csv
import json
import math
from typing import TYPE_CHECKING, Any

import torch

from structseg.data.base import ClassInfo
from structseg.engine.rundir import RunDir

if TYPE_CHECKING:
    from structseg.models.fastpath import FastPath

__all__ = ["RunLog", "describe_environment", "log_header", "write_summary"]

VAL_COLUMNS = ("val_miou", "val_pixel_acc", "val_mean_acc", "val_fwiou")


def log_header(part_names: list[str]) -> list[str]:
    """The CSV columns for a loss made of ``part_names``."""
    return (["iteration", "epoch", "loss"] + [f"loss_{p}" for p in part_names]
            + ["lr", "seconds", *VAL_COLUMNS])


class RunLog:
    """``log.csv`` + TensorBoard of one run; a no-op where ``enabled`` is false (non-main processes)."""

    def __init__(self, run: RunDir, part_names: list[str], *, enabled: bool = True) -> None:
        self.run = run
        self.header = log_header(part_names)
        self.enabled = enabled
        self._file: Any = None
        self._csv: csv.DictWriter[str] | None = None
        self._tb: Any = None

    def truncate(self, iteration: int) -> None:
        """Drop rows written after ``iteration`` (the checkpoint a resumed run starts from)."""
        if not self.enabled or not self.run.log.is_file():
            return
        with open(self.run.log, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        kept = [r for r in rows if r.get("iteration") and float(r["iteration"]) <= iteration]
        with open(self.run.log, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.header, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)

    def open(self, iteration: int = 0) -> None:
        """Append to ``log.csv`` (header when new); TensorBoard events after ``iteration`` are purged."""
        if not self.enabled:
            return
        new = not self.run.log.is_file() or self.run.log.stat().st_size == 0
        self._file = open(self.run.log, "a", newline="", encoding="utf-8")
        self._csv = csv.DictWriter(self._file, fieldnames=self.header, extrasaction="ignore")
        if new:
            self._csv.writeheader()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run.tb), purge_step=iteration + 1 if iteration else None)
        except ImportError:  # tensorboard is optional at run time
            self._tb = None

    def write(self, row: dict[str, Any]) -> None:
        if self._file is None or self._csv is None:
            return
        self._csv.writerow(row)
        self._file.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key not in ("iteration", "epoch") and isinstance(value, float) and math.isfinite(value):
                    self._tb.add_scalar(key.replace("_", "/", 1) if key.startswith(("loss_", "val_")) else key,
                                        value, row["iteration"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def describe_environment(device: torch.device, fast_path: FastPath, batch_size: int, world: int,
                         local_batch: int) -> dict[str, str]:
    """Where and how a run computes, printed once at the start and kept in metrics.json (the report shows it)."""
    precision = {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}.get(
        fast_path.autocast_dtype, "fp32")  # type: ignore[arg-type]
    return {
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "threads": str(torch.get_num_threads()),
        "training": f"{precision}, {'channels_last' if fast_path.channels_last else 'contiguous'}",
        "evaluation": f"{precision}{', BatchNorm folded' if fast_path.fold_batchnorm else ''}",
        "batch": f"{batch_size} = {world} process(es) x {local_batch}",
    }


def write_summary(run: RunDir, result: Any, classes: ClassInfo, steps_per_epoch: int, split: str,
                  environment: dict[str, str] | None = None) -> None:
    """After training: the loss and mIoU curves and the confusion matrix (``figures/``), ``metrics.json``
    and the per-class table on stdout."""
    from structseg.viz.curves import plot_loss_curve, plot_miou_curve, read_log

    rows = read_log(run.log)
    plot_loss_curve(rows, run.figures / "loss_curve.png")
    plot_miou_curve(rows, run.figures / "miou_curve.png")
    names = list(classes.names)
    summary: dict[str, Any] = {
        "iterations": result.iterations,
        "epochs": round(result.iterations / steps_per_epoch, 3),
        "best_miou": result.best_miou,
        "best_iteration": result.best_iteration,
        "train_seconds": round(result.seconds, 2),
        "split": split,
        "environment": environment or {},
    }
    if result.final_metrics is not None:
        summary["final"] = result.final_metrics.as_dict(names)
        from structseg.metrics.plots import plot_confusion

        plot_confusion(result.final_metrics.confusion, names, run.figures / "confusion.png")
        print(result.final_metrics.table(names))
    run.metrics.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(f"structseg train: best val mIoU {100 * result.best_miou:.2f} at iteration {result.best_iteration}; "
          f"run directory {run.root}")
