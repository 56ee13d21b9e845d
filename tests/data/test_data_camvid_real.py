"""The shared CamVid copy, when present: counts, sizes and label ranges (a handful of items fully)."""
from __future__ import annotations

import pytest
import torch

from structseg.data import build_dataset

pytestmark = pytest.mark.camvid


def test_real_camvid(camvid_dir) -> None:
    train = build_dataset("camvid", camvid_dir, "train")
    val = build_dataset("camvid", camvid_dir, "val")
    assert len(train) == 367 and len(val) == 101
    assert all(p.is_file() and m.is_file() for p, m in train.samples + val.samples)
    for ds in (train, val):
        for i in (0, len(ds) // 2, len(ds) - 1):
            image, mask = ds[i]
            assert image.shape == (3, 360, 480) and image.dtype == torch.uint8
            assert mask.shape == (360, 480) and mask.dtype == torch.int64
            values = set(mask.unique().tolist())
            assert values <= set(range(11)) | {255} and len(values - {255}) >= 3
