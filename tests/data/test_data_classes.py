"""Color coding round trip, class statistics against a brute-force count, class weights by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from structseg.data import build_dataset
from structseg.data.base import ClassInfo
from structseg.data.classes import class_frequency, class_statistics, class_weights, decode_target, encode_target
from structseg.errors import DataError

CLASSES = ClassInfo(("a", "b", "c"), ((10, 20, 30), (200, 0, 0), (0, 0, 200)), ignore_index=255,
                    ignore_color=(255, 255, 255))


def test_decode_encode_round_trip() -> None:
    mask = torch.tensor([[0, 1, 2], [255, 2, 0]])
    rgb = decode_target(mask, CLASSES)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert tuple(rgb[0, 1]) == (200, 0, 0) and tuple(rgb[1, 0]) == (255, 255, 255)
    assert torch.equal(encode_target(rgb, CLASSES), mask)


def test_encode_unknown_color_names_it() -> None:
    rgb = decode_target(torch.zeros(4, 4, dtype=torch.long), CLASSES)
    rgb[2, 3] = (7, 8, 9)
    with pytest.raises(DataError, match=r"some/file\.png: color\(s\) \(7, 8, 9\) not in the palette"):
        encode_target(rgb, CLASSES, source="some/file.png")


def test_decode_rejects_values_outside_classes() -> None:
    with pytest.raises(DataError, match=r"\[3\]"):
        decode_target(torch.tensor([[0, 3]]), CLASSES)


def test_class_statistics_match_brute_force(make_tiny_dataset) -> None:
    data = make_tiny_dataset("camvid", n=4)
    ds = build_dataset("camvid", data.root, "train")
    stats = class_statistics(ds, progress=False)
    masks = [item.mask for item in data.items["train"]]
    for k in range(11):
        assert stats.pixels[k] == sum(int((m == k).sum()) for m in masks)
        assert stats.images[k] == sum(int((m == k).any()) for m in masks)
        assert stats.image_pixels[k] == sum(m.size for m in masks if (m == k).any())
    assert stats.ignored == sum(int((m == 255).sum()) for m in masks)
    np.testing.assert_array_equal(class_frequency(ds, progress=False), stats.pixels)
    assert class_statistics(ds, limit=1, progress=False).num_images == 1


def test_class_weights_by_hand() -> None:
    counts = [100, 300, 0, 600]
    p = [0.1, 0.3, 0.0, 0.6]
    inverse = class_weights(counts, "inverse")
    torch.testing.assert_close(inverse, torch.tensor([1 / (3 * 0.1), 1 / (3 * 0.3), 0.0, 1 / (3 * 0.6)]))
    median = class_weights(counts, "median")
    torch.testing.assert_close(median, torch.tensor([0.3 / 0.1, 1.0, 0.0, 0.3 / 0.6]))
    enet = class_weights(counts, "enet")
    torch.testing.assert_close(enet, torch.tensor([1 / math.log(1.02 + q) if q else 0.0 for q in p]))
    # Eigen & Fergus: frequency within the images that contain the class
    median_images = class_weights(counts, "median", image_pixels=[1000, 600, 0, 1200])
    f = [0.1, 0.5, 0.5]
    torch.testing.assert_close(median_images, torch.tensor([0.5 / f[0], 0.5 / f[1], 0.0, 0.5 / f[2]]))


def test_class_weights_bad_input() -> None:
    with pytest.raises(DataError, match="unknown method 'sqrt'"):
        class_weights([1, 2], "sqrt")
    with pytest.raises(DataError, match="zero"):
        class_weights([0, 0], "enet")
