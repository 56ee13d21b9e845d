"""The comparison figure: each row titled by its image, ignored pixels in a color no class has (with a legend
entry), SAM's raw masks shown as pictures."""
from __future__ import annotations

import numpy as np
import torch

from structseg.viz.grid import GridRow, comparison_figure, distinct_ignore_color, spread_indices

VOC_LIKE = ((0, 0, 0), (128, 0, 0), (0, 128, 0))  # class 0 is black, as VOC's background


def _rows() -> list[GridRow]:
    truth = torch.tensor([[0, 1], [2, 255]])
    image = np.full((2, 2, 3), 90, np.uint8)
    raw_sam = np.full((2, 2, 3), 17, np.uint8)
    return [GridRow(image=image, truth=truth, predictions=[torch.tensor([[0, 0], [1, 2]]), raw_sam], name="f1.png"),
            GridRow(image=image, truth=truth, predictions=[torch.zeros(2, 2, dtype=torch.long), raw_sam],
                    name="f2.png")]


def test_rows_are_titled_by_their_images_and_columns_by_models() -> None:
    fig = comparison_figure(_rows(), ["model A", "SAM (raw masks)"], VOC_LIKE, class_names=["bg", "a", "b"])
    axes = fig.axes
    assert [axes[0].get_title(), axes[4].get_title()] == ["f1.png", "f2.png"]
    assert [a.get_title() for a in axes[1:4]] == ["ground truth", "model A", "SAM (raw masks)"]


def test_ignored_pixels_have_their_own_color_and_legend_entry() -> None:
    fig = comparison_figure(_rows(), ["model A", "SAM"], VOC_LIKE, class_names=["bg", "a", "b"], ignore_color=(0, 0, 0))
    truth_cell = np.asarray(fig.axes[1].images[0].get_array())
    assert tuple(truth_cell[1, 1]) == (255, 255, 255)  # ignore: not black, which is the background class
    assert tuple(truth_cell[0, 0]) == (0, 0, 0)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["bg", "a", "b", "ignore (255)"]
    swatch = fig.legends[0].get_patches()[-1]
    assert swatch.get_facecolor()[:3] == (1.0, 1.0, 1.0)
    assert swatch.get_edgecolor()[:3] != swatch.get_facecolor()[:3]  # a white swatch stays visible on white
    sam_cell = np.asarray(fig.axes[3].images[0].get_array())
    assert (sam_cell == 17).all()  # an RGB panel is shown as it is, not colored as labels


def test_ignore_color_stays_free_of_the_palette() -> None:
    assert distinct_ignore_color(VOC_LIKE, (0, 0, 0)) == (255, 255, 255)
    assert distinct_ignore_color(VOC_LIKE, (10, 20, 30)) == (10, 20, 30)
    assert distinct_ignore_color([(255, 255, 255), (224, 224, 192)]) == (128, 128, 128)


def test_spread_indices_cover_first_and_last() -> None:
    assert spread_indices(10, 4) == [0, 3, 6, 9]
    assert spread_indices(3, 10) == [0, 1, 2]
    assert spread_indices(0, 4) == []
