"""Figures about a data set: class frequencies and weights, one example per class, the palette."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from structseg.data.base import ClassInfo
from structseg.data.classes import ClassStats, decode_target


def _rgb01(color: Sequence[int]) -> tuple[float, float, float]:
    return (color[0] / 255, color[1] / 255, color[2] / 255)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)
    return path


def add_palette_legend(fig: Figure, classes: ClassInfo, *, ncol: int | None = None, y: float = 0.0) -> None:
    """A legend of class colors (and the ignore color) along the bottom of ``fig``."""
    handles = [
        Patch(facecolor=_rgb01(c), edgecolor="black", linewidth=0.5, label=f"{i} {n}")
        for i, (n, c) in enumerate(zip(classes.names, classes.palette))
    ]
    handles.append(Patch(facecolor=_rgb01(classes.ignore_color), edgecolor="black", linewidth=0.5,
                         label=f"{classes.ignore_index} ignore"))
    rows = -(-len(handles) // 12)
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, y),
               ncol=ncol or -(-len(handles) // rows), fontsize=8, frameon=False)


def plot_class_statistics(
    stats: ClassStats,
    classes: ClassInfo,
    path: str | Path,
    *,
    weights: torch.Tensor | np.ndarray | None = None,
    weight_method: str = "",
    title: str = "",
) -> Path:
    """Bar chart of each class's share of labelled pixels (log scale) and, below, its loss weight."""
    k = classes.num_classes
    colors = [_rgb01(c) for c in classes.palette]
    rows = 2 if weights is not None else 1
    fig = Figure(figsize=(max(6.0, 0.55 * k + 2), 3.2 * rows + 0.6))
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    freq = 100 * stats.frequency
    ax = axes[0]
    bars = ax.bar(range(k), np.where(freq > 0, freq, np.nan), color=colors, edgecolor="black", linewidth=0.5)
    ax.set_yscale("log")
    ax.set_ylabel("% of labelled pixels")
    for bar, f, n in zip(bars, freq, stats.images):
        if f > 0:
            ax.annotate(f"{f:.2g}%\n{n} img", (bar.get_x() + bar.get_width() / 2, f), ha="center",
                        va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.margins(y=0.25)
    ax.set_title(title or f"class frequency over {stats.num_images} images")
    if weights is not None:
        w = np.asarray(weights, dtype=float)
        axes[1].bar(range(k), w, color=colors, edgecolor="black", linewidth=0.5)
        axes[1].set_ylabel(f"{weight_method} weight".strip())
        for x, v in enumerate(w):
            axes[1].annotate(f"{v:.2f}", (x, v), ha="center", va="bottom", fontsize=7)
    axes[-1].set_xticks(range(k), classes.names, rotation=45, ha="right")
    fig.tight_layout()
    return _save(fig, path)


def plot_class_examples(
    examples: Sequence[tuple[int, torch.Tensor, torch.Tensor]],
    classes: ClassInfo,
    path: str | Path,
    *,
    pairs_per_row: int = 5,
    title: str = "",
) -> Path:
    """For each ``(class_id, image uint8 (3,H,W), mask (H,W))``: the image beside its colored mask, with a palette
    legend."""
    rows = max(1, -(-len(examples) // pairs_per_row))
    h, w = (examples[0][1].shape[-2:] if examples else (1, 1))
    panel = 2.0
    fig = Figure(figsize=(2 * pairs_per_row * panel * max(w / h, 0.5), rows * panel * 1.12 + 1.2))
    axes = fig.subplots(rows, 2 * pairs_per_row, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for slot, (class_id, image, mask) in enumerate(examples):
        r, c = divmod(slot, pairs_per_row)
        image_ax, mask_ax = axes[r, 2 * c], axes[r, 2 * c + 1]
        image_ax.imshow(image.permute(1, 2, 0).numpy() if isinstance(image, torch.Tensor) else image)
        mask_ax.imshow(decode_target(mask, classes), interpolation="nearest")
        share = (float((mask == class_id).float().mean()) if isinstance(mask, torch.Tensor)
                 else float((mask == class_id).mean()))
        image_ax.set_title(f"{class_id} {classes.names[class_id]}", fontsize=9)
        mask_ax.set_title(f"mask ({100 * share:.1f}%)", fontsize=8)
    if title:
        fig.suptitle(title)
    legend_rows = -(-(classes.num_classes + 1) // 12)
    fig.tight_layout(rect=(0, 0.06 * legend_rows / max(rows, 1) + 0.04, 1, 0.97 if title else 1))
    add_palette_legend(fig, classes)
    return _save(fig, path)
