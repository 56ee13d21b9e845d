"""Engine figures and the HTML report: masks, curves, confusion heatmap, comparison grid."""
from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from structseg.metrics.plots import normalize_rows, plot_confusion
from structseg.viz.curves import plot_loss_curve, plot_miou_curve, read_log, smooth
from structseg.viz.grid import GridRow, comparison_grid
from structseg.viz.masks import colorize, image_to_hwc, overlay
from structseg.viz.report import ReportContent, render_report

PALETTE = [(10, 20, 30), (200, 0, 0), (0, 200, 0)]


def test_colorize_matches_per_pixel_lookup():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 3, (5, 7))
    mask[0, 0], mask[1, 1] = 255, 9  # ignored, out of range
    out = colorize(torch.from_numpy(mask), PALETTE, ignore_index=255, ignore_color=(1, 2, 3))
    for y in range(5):
        for x in range(7):
            want = PALETTE[mask[y, x]] if mask[y, x] < 3 else (1, 2, 3)
            assert tuple(out[y, x]) == want


def test_overlay_blends_and_checks_size():
    img = torch.full((3, 2, 2), 100, dtype=torch.uint8)
    col = np.full((2, 2, 3), 200, dtype=np.uint8)
    assert (overlay(img, col, alpha=0.25) == 125).all()
    assert image_to_hwc(img).shape == (2, 2, 3)
    with pytest.raises(ValueError, match="differ"):
        overlay(img, np.zeros((3, 3, 3), np.uint8))


def test_smooth_is_trailing_mean():
    v = np.array([1.0, 2.0, 3.0, 4.0])
    assert smooth(v, 2).tolist() == [1.0, 1.5, 2.5, 3.5]


def test_curves_from_log(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("iteration,epoch,loss,loss_ce,lr,val_miou\n1,0.5,2.0,2.0,0.1,\n2,1.0,1.5,1.5,0.1,\n"
                   "2,1.0,,,,0.25\n4,2.0,1.0,1.0,0.05,\n4,2.0,,,,0.5\n")
    rows = read_log(log)
    assert rows[2] == {"iteration": 2.0, "epoch": 1.0, "val_miou": 0.25}
    for fn, name in ((plot_loss_curve, "loss.png"), (plot_miou_curve, "miou.png")):
        path = fn(rows, tmp_path / name)
        assert Image.open(path).size[0] > 100


def test_confusion_rows_normalized_and_plotted(tmp_path):
    m = torch.tensor([[3, 1], [0, 0]])
    assert normalize_rows(m).tolist() == [[0.75, 0.25], [0.0, 0.0]]
    assert Image.open(plot_confusion(m, ["x", "y"], tmp_path / "c.png")).format == "PNG"


def test_comparison_grid_layout(tmp_path):
    img = torch.randint(0, 255, (3, 24, 32), dtype=torch.uint8)
    lab = torch.randint(0, 3, (24, 32))
    rows = [GridRow(img, [lab, lab], truth=lab), GridRow(img, [lab, lab], truth=None)]
    path = comparison_grid(rows, ["m1", "m2"], PALETTE, tmp_path / "g.png", class_names=["a", "b", "c"],
                           cell_inches=1.0)
    w, h = Image.open(path).size
    assert w == 400  # 4 columns (image, truth, m1, m2) of 1 inch at 100 dpi
    with pytest.raises(ValueError, match="2 models"):
        comparison_grid([GridRow(img, [lab])], ["m1", "m2"], PALETTE, tmp_path / "x.png")


def test_report_is_self_contained():
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    metrics = {"miou": 0.5, "pixel_acc": 0.9, "per_class": {"a<b": {"iou": 0.25, "acc": 0.5, "dice": None}}}
    html = render_report(ReportContent("run <x>", "a: 1\n", {"k": "v"}, metrics, figures=[("curve", buf.getvalue())],
                                       samples=[("s", buf.getvalue())]))
    assert "run &lt;x&gt;" in html and "a&lt;b" in html and "25.0" in html
    assert not re.search(r'src="(?!data:)', html)  # nothing loaded from elsewhere
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(uris) == 2 and base64.b64decode(uris[0]) == buf.getvalue()
