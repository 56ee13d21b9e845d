"""Confusion-matrix heatmap (rows = truth, normalised per row)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from structseg.viz.masks import ArrayLike, to_numpy


def normalize_rows(matrix: ArrayLike) -> np.ndarray:
    """Each row divided by its sum (rows with no pixels stay 0)."""
    m = to_numpy(matrix).astype(np.float64)
    sums = m.sum(axis=1, keepdims=True)
    return np.divide(m, sums, out=np.zeros_like(m), where=sums > 0)


def plot_confusion(
    matrix: ArrayLike, class_names: Sequence[str], path: str | Path, title: str = "confusion (row-normalised)"
) -> Path:
    """Save a heatmap of the row-normalised confusion matrix, values in percent when it is small."""
    norm = normalize_rows(matrix)
    k = norm.shape[0]
    size = max(4.0, 0.45 * k + 2.0)
    fig = Figure(figsize=(size + 1, size), dpi=100)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), labels=list(class_names), rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels=list(class_names), fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if k <= 24:
        for i in range(k):
            for j in range(k):
                if norm[i, j] >= 0.005:
                    ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
