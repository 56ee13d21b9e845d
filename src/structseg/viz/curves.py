"""Training curves from a run's ``log.csv``: loss and validation mIoU."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def read_log(path: str | Path) -> list[dict[str, float]]:
    """Rows of ``log.csv`` with numeric values; empty cells are left out of each row."""
    rows: list[dict[str, float]] = []
    with open(path, newline="", encoding="utf-8") as handle:
        for raw in csv.DictReader(handle):
            row = {}
            for key, value in raw.items():
                if key is None or value in (None, ""):
                    continue
                try:
                    row[key] = float(value)
                except ValueError:
                    continue
            rows.append(row)
    return rows


def _series(rows: list[dict[str, float]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["iteration"], r[key]) for r in rows if key in r and "iteration" in r]
    if not pts:
        return np.empty(0), np.empty(0)
    arr = np.asarray(pts, dtype=np.float64)
    return arr[:, 0], arr[:, 1]


def _epoch_axis(ax, rows: list[dict[str, float]]) -> None:
    """A second x axis in epochs, when the log says how iterations map to epochs."""
    ratios = [r["epoch"] / r["iteration"] for r in rows if r.get("iteration", 0) > 0 and "epoch" in r]
    if not ratios or ratios[-1] <= 0:
        return
    k = ratios[-1]
    top = ax.secondary_xaxis("top", functions=(lambda it: it * k, lambda ep: ep / k))
    top.set_xlabel("epoch")


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (same length as ``values``)."""
    if window <= 1 or values.size == 0:
        return values
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, values.size + 1)
    lo = np.maximum(0, idx - window)
    return (csum[idx] - csum[lo]) / (idx - lo)


def plot_loss_curve(rows: list[dict[str, float]], path: str | Path, title: str = "training loss") -> Path:
    """Total loss (raw and smoothed) and each loss part against iterations."""
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    it, loss = _series(rows, "loss")
    if it.size:
        ax.plot(it, loss, color="tab:blue", alpha=0.3, lw=1, label="loss")
        ax.plot(it, smooth(loss, max(1, it.size // 20)), color="tab:blue", lw=2, label="loss (smoothed)")
    parts = sorted({k for r in rows for k in r if k.startswith("loss_")})
    for part in parts if len(parts) > 1 else []:
        pit, pv = _series(rows, part)
        ax.plot(pit, smooth(pv, max(1, pit.size // 20)), lw=1, label=part[len("loss_"):])
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if it.size:
        ax.legend(loc="upper right", fontsize=8)
        _epoch_axis(ax, rows)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_miou_curve(rows: list[dict[str, float]], path: str | Path, title: str = "validation mIoU") -> Path:
    """Validation mIoU (and pixel accuracy) at each evaluation, in percent."""
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    it, miou = _series(rows, "val_miou")
    if it.size:
        ax.plot(it, 100 * miou, marker="o", color="tab:green", label="mIoU")
        best = int(np.argmax(miou))
        ax.annotate(f"best {100 * miou[best]:.1f}", (it[best], 100 * miou[best]),
                    textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
        pit, acc = _series(rows, "val_pixel_acc")
        if pit.size:
            ax.plot(pit, 100 * acc, marker=".", color="tab:gray", alpha=0.6, label="pixel acc")
        ax.legend(loc="lower right", fontsize=8)
        _epoch_axis(ax, rows)
    else:
        ax.text(0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("iteration")
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
