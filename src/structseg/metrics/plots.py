"""Figures of evaluation results: confusion matrix heat map and per-class IoU bars.

matplotlib is imported inside the functions so that importing
:mod:`structseg.metrics` stays cheap; figures are drawn on an Agg canvas
without pyplot, so no global backend state is touched.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from structseg.errors import DataError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from structseg.metrics.confusion import SegMetrics


def _figure(width: float, height: float) -> tuple[Figure, Axes]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _check_names(class_names: Sequence[str], k: int, what: str) -> list[str]:
    names = [str(n) for n in class_names]
    if len(names) != k:
        raise DataError(f"{what}: {len(names)} class names for {k} classes")
    return names


def normalize_rows(matrix: torch.Tensor) -> torch.Tensor:
    """Each truth row divided by its total (rows without pixels stay 0): per-class recall view."""
    m = torch.as_tensor(matrix).detach().to("cpu", torch.float64)
    totals = m.sum(1, keepdim=True)
    return torch.where(totals > 0, m / totals.clamp_min(1), torch.zeros_like(m))


def plot_confusion(
    matrix: torch.Tensor,
    class_names: Sequence[str],
    path: str | Path,
    normalize: bool = True,
    title: str | None = None,
) -> Path:
    """Save the (K, K) confusion matrix (rows = truth) as a PNG heat map and return its path.

    With ``normalize`` each row is shown as fractions of that class's true pixels.
    """
    m = torch.as_tensor(matrix).detach().cpu()
    if m.dim() != 2 or m.shape[0] != m.shape[1]:
        raise DataError(f"plot_confusion: matrix must be (K, K), got shape {tuple(m.shape)}")
    k = int(m.shape[0])
    names = _check_names(class_names, k, "plot_confusion")
    values = normalize_rows(m) if normalize else m.to(torch.float64)

    size = max(4.0, 0.45 * k + 2.0)
    fig, ax = _figure(size + 1.0, size)
    image = ax.imshow(values.numpy(), cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    ax.set_title(title or ("confusion (row-normalized)" if normalize else "confusion (pixels)"))
    if k <= 20:
        top = float(values.max()) if values.numel() else 0.0
        for i in range(k):
            for j in range(k):
                v = float(values[i, j])
                text = f"{v:.2f}" if normalize else f"{int(v)}"
                ax.text(j, i, text, ha="center", va="center", fontsize=6,
                        color="white" if top > 0 and v > 0.5 * top else "black")
    return _save(fig, path)


def plot_per_class_iou(
    metrics: SegMetrics | torch.Tensor,
    class_names: Sequence[str],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Save a horizontal bar chart of per-class IoU (absent classes marked) and return its path.

    ``metrics`` is a :class:`SegMetrics` (its mIoU is drawn as a line) or a (K,) IoU tensor.
    """
    if isinstance(metrics, torch.Tensor):
        iou = metrics.detach().cpu().double()
        valid = ~torch.isnan(iou)
        miou = float(iou[valid].mean()) if bool(valid.any()) else math.nan
    else:
        iou = metrics.iou.double()
        miou = metrics.miou
    if iou.dim() != 1:
        raise DataError(f"plot_per_class_iou: IoU must be a (K,) tensor, got shape {tuple(iou.shape)}")
    k = int(iou.shape[0])
    names = _check_names(class_names, k, "plot_per_class_iou")
    absent = torch.isnan(iou)

    fig, ax = _figure(7.0, max(2.5, 0.35 * k + 1.2))
    rows = list(range(k))
    ax.barh(rows, (100 * iou.nan_to_num(0.0)).tolist(), color=["lightgray" if a else "tab:blue" for a in absent])
    for i in rows:
        label = "absent" if absent[i] else f"{100 * float(iou[i]):.1f}"
        ax.text(1.0 if absent[i] else 100 * float(iou[i]) + 1.0, i, label, va="center", fontsize=7)
    if not math.isnan(miou):
        ax.axvline(100 * miou, color="tab:red", linestyle="--", label=f"mIoU {100 * miou:.1f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(rows, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("IoU (%)")
    ax.set_title(title or "per-class IoU")
    return _save(fig, path)
