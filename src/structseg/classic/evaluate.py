"""Scoring classic segmentations against a labelled split, in the networks' metrics.

Each image is segmented, each segment takes its majority true class (pixels excluded
by the ignore index do not vote) and the resulting class maps go through
:class:`structseg.metrics.ConfusionMatrix`, so the scores sit in the same table as
trained networks. The labeling is an oracle: read the numbers as the ceiling a perfect
segment classifier would reach, next to the number of segments per image.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from structseg.classic.labeling import majority_labels
from structseg.classic.methods import method_params, segment
from structseg.errors import ConfigError


@dataclass
class Example:
    """One evaluated image kept for figures."""

    name: str
    image: np.ndarray
    truth: np.ndarray
    segments: np.ndarray
    labels: np.ndarray


@dataclass
class ClassicResult:
    """Scores, per-image times and segment counts of one method on one split."""

    method: str
    params: dict[str, Any]
    metrics: Any  # structseg.metrics.SegMetrics
    names: list[str]
    seconds: list[float]
    segments: list[int]
    examples: list[Example] = field(default_factory=list)

    @property
    def seconds_per_image(self) -> float:
        return float(np.mean(self.seconds)) if self.seconds else float("nan")

    @property
    def segments_per_image(self) -> float:
        return float(np.mean(self.segments)) if self.segments else float("nan")

    def as_dict(self, class_names: list[str] | None = None) -> dict[str, Any]:
        """JSON-serialisable summary, per-image rows included."""
        return {
            "method": self.method,
            "params": self.params,
            "images": len(self.seconds),
            "seconds_per_image": self.seconds_per_image,
            "segments_per_image": self.segments_per_image,
            "metrics": self.metrics.as_dict(class_names),
            "per_image": [
                {"name": n, "seconds": s, "segments": k} for n, s, k in zip(self.names, self.seconds, self.segments)
            ],
        }


def dataset_item(dataset: Any, index: int, size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Item ``index`` of an untransformed data set as an (H, W, 3) uint8 image and an int64 label map, resized
    to ``size = (h, w)`` when given (:func:`structseg.data.transforms.resize_pair`: area / nearest)."""
    import torch

    from structseg.data.transforms import resize_pair

    image, mask = dataset[index]
    image, mask = torch.as_tensor(np.asarray(image)), torch.as_tensor(np.asarray(mask, dtype=np.int64))
    if image.dim() == 3 and image.shape[-1] == 3 and image.shape[0] != 3:
        image = image.permute(2, 0, 1)
    if size is not None:
        if min(size) < 2:
            raise ConfigError(f"size must be at least 2x2, got {size}")
        image, mask = resize_pair(image.to(torch.uint8), mask, (int(size[0]), int(size[1])))
    return np.ascontiguousarray(image.permute(1, 2, 0).numpy(), dtype=np.uint8), mask.numpy().astype(np.int64)


def evaluate_classic(
    dataset: Any,
    method: str,
    params: dict[str, Any] | None = None,
    *,
    limit: int | None = None,
    indices: Sequence[int] | None = None,
    size: tuple[int, int] | None = None,
    keep: int = 0,
    progress: bool = True,
) -> ClassicResult:
    """Segment the first ``limit`` items (or the items ``indices``) of an untransformed
    ``SegmentationDataset`` and score them.

    ``size = (h, w)`` resizes every image (area) and truth (nearest) first; ``keep``
    examples are returned for figures.
    """
    import torch
    from tqdm import tqdm

    from structseg.metrics import ConfusionMatrix

    params = dict(params or {})
    method_params(method)  # unknown method -> ConfigError before any work
    classes = dataset.classes
    if indices is None:
        indices = range(len(dataset) if limit is None else min(limit, len(dataset)))
    cm = ConfusionMatrix(classes.num_classes, ignore_index=classes.ignore_index)
    result = ClassicResult(method, params, None, [], [], [])
    for i in tqdm(indices, desc=f"classic {method}", unit="img", disable=not progress):
        image, truth = dataset_item(dataset, i, size)
        start = time.perf_counter()
        segments = segment(image, method, **params)
        result.seconds.append(time.perf_counter() - start)
        labels = majority_labels(segments, truth, classes.num_classes, classes.ignore_index)
        scored = np.where(labels == classes.ignore_index, 0, labels)  # such segments hold only ignored truth
        cm.update(torch.from_numpy(scored), torch.from_numpy(truth))
        result.segments.append(int(segments.max()) + 1)
        describe = getattr(dataset, "describe", None)
        result.names.append(describe(i) if describe else f"item {i}")
        if len(result.examples) < keep:
            result.examples.append(Example(result.names[-1], image, truth, segments, labels))
    result.metrics = cm.compute()
    return result


def example_figure(
    result: ClassicResult,
    palette: Sequence[Sequence[int]],
    path: str | Path,
    ignore_color: Sequence[int] = (0, 0, 0),
) -> None:
    """PNG grid, one row per kept example: image | truth | segments | majority labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from structseg.classic.render import colorize_segments, overlay_segments
    from structseg.viz.masks import colorize

    rows = result.examples
    if not rows:
        return
    fig, axes = plt.subplots(len(rows), 4, figsize=(12, 2.6 * len(rows)), squeeze=False)
    for ax_row, ex in zip(axes, rows):
        panels = [
            ("image", ex.image),
            ("truth", colorize(ex.truth, palette, ignore_color=ignore_color)),
            (f"{result.method}: {int(ex.segments.max()) + 1} segments",
             overlay_segments(ex.image, colorize_segments(ex.segments), ex.segments)),
            ("majority class", colorize(ex.labels, palette, ignore_color=ignore_color)),
        ]
        for ax, (title, picture) in zip(ax_row, panels):
            ax.imshow(picture)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
