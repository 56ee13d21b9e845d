"""The comparison grid: image | ground truth | model 1 | model 2 | ..."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from structseg.viz.masks import ArrayLike, colorize, image_to_hwc


def _unit_rgb(color: Sequence[int]) -> tuple[float, float, float]:
    return (color[0] / 255.0, color[1] / 255.0, color[2] / 255.0)


def distinct_ignore_color(palette: Sequence[Sequence[int]], preferred: Sequence[int] | None = None) -> tuple[int, ...]:
    """A color for ignored pixels that no class has: ``preferred`` when free, else the first free of white,
    VOC's cream (224, 224, 192), mid grey and magenta."""
    taken = {tuple(int(v) for v in c) for c in palette}
    options = ([tuple(int(v) for v in preferred)] if preferred is not None else []) + [
        (255, 255, 255), (224, 224, 192), (128, 128, 128), (255, 0, 255)]
    return next((c for c in options if c not in taken), (255, 255, 255))


def spread_indices(total: int, count: int) -> list[int]:
    """Up to ``count`` indices of ``0..total-1`` spread evenly from the first to the last: the samples a figure
    shows, the same for every run of a split."""
    n = min(count, total)
    return sorted({round(i * (total - 1) / max(1, n - 1)) for i in range(n)}) if n > 0 else []


@dataclass
class GridRow:
    """One image with its truth (optional) and one label map per model."""

    image: ArrayLike
    predictions: Sequence[ArrayLike]
    truth: ArrayLike | None = None
    name: str = ""


def comparison_figure(
    rows: Sequence[GridRow],
    model_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    *,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    ignore_color: Sequence[int] | None = None,
    cell_inches: float = 2.6,
) -> Figure:
    """A figure with one row per image (its first cell titled by the image's name) and columns titled by
    model name. Ignored pixels get a color of their own (``ignore_color`` unless a class has it) with a legend
    entry; a prediction given as an RGB picture (SAM's raw masks) is shown as it is."""
    if not rows:
        raise ValueError("comparison_figure: no rows")
    shown_ignore = distinct_ignore_color(palette, ignore_color)
    show_truth = any(r.truth is not None for r in rows)
    titles = ["image"] + (["ground truth"] if show_truth else []) + list(model_names)
    ncols = len(titles)
    first = image_to_hwc(rows[0].image)
    aspect = first.shape[0] / max(1, first.shape[1])
    fig = Figure(figsize=(cell_inches * ncols, cell_inches * aspect * len(rows) + 0.8), dpi=100)
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for r, row in enumerate(rows):
        if len(row.predictions) != len(model_names):
            raise ValueError(f"row {r}: {len(row.predictions)} predictions for {len(model_names)} models")
        cells: list[np.ndarray | None] = [image_to_hwc(row.image)]
        if show_truth:
            cells.append(None if row.truth is None else colorize(row.truth, palette, ignore_index, shown_ignore))
        cells += [image_to_hwc(p) if np.ndim(p) == 3 else colorize(p, palette, ignore_index, shown_ignore)
                  for p in row.predictions]
        for c, cell in enumerate(cells):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if cell is None:
                ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
            else:
                ax.imshow(cell, interpolation="nearest")
            if c == 0:
                ax.set_title(row.name or "image", fontsize=8)
            elif r == 0:
                ax.set_title(titles[c], fontsize=10)
    if class_names:
        swatches = [*zip(class_names, palette), (f"ignore ({ignore_index})", shown_ignore)]
        handles = [Patch(facecolor=_unit_rgb(c), edgecolor="0.4", linewidth=0.5, label=n) for n, c in swatches]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06 if class_names else 0, 1, 1))
    return fig


def comparison_grid(rows: Sequence[GridRow], model_names: Sequence[str], palette: Sequence[Sequence[int]],
                    path: str | Path, **options: Any) -> Path:
    """:func:`comparison_figure` saved as a PNG at ``path``."""
    fig = comparison_figure(rows, model_names, palette, **options)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
