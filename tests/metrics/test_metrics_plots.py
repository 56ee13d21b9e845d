"""Figures: PNG files are written, normalization is per truth row, bad names are refused."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from structseg.errors import DataError
from structseg.metrics import ConfusionMatrix, plot_confusion, plot_per_class_iou
from structseg.metrics.plots import normalize_rows

NAMES = ["road", "sky", "car"]


def _metrics():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[0, 0, 1, 1]]), torch.tensor([[0, 1, 1, 1]]))  # class 2 absent
    return cm


def _is_png(path) -> bool:
    with Image.open(path) as image:
        return image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100


def test_normalize_rows_per_truth_row():
    m = torch.tensor([[2, 2, 0], [1, 3, 0], [0, 0, 0]])
    rows = normalize_rows(m)
    torch.testing.assert_close(rows[0], torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))
    torch.testing.assert_close(rows[1], torch.tensor([0.25, 0.75, 0.0], dtype=torch.float64))
    assert rows[2].tolist() == [0.0, 0.0, 0.0]  # empty row stays 0, no NaN


@pytest.mark.parametrize("normalize", [True, False])
def test_plot_confusion_writes_png(tmp_path, normalize):
    path = plot_confusion(_metrics().matrix, NAMES, tmp_path / "sub" / "confusion.png", normalize=normalize)
    assert path.exists() and _is_png(path)


def test_plot_per_class_iou_writes_png(tmp_path):
    cm = _metrics()
    a = plot_per_class_iou(cm.compute(), NAMES, tmp_path / "iou.png")
    b = plot_per_class_iou(cm.compute().iou, NAMES, tmp_path / "iou_tensor.png")
    assert _is_png(a) and _is_png(b)


def test_plots_refuse_wrong_names(tmp_path):
    cm = _metrics()
    with pytest.raises(DataError, match="2 class names for 3 classes"):
        plot_confusion(cm.matrix, NAMES[:2], tmp_path / "x.png")
    with pytest.raises(DataError, match="2 class names for 3 classes"):
        plot_per_class_iou(cm.compute(), NAMES[:2], tmp_path / "y.png")
    assert not list(tmp_path.iterdir())
