"""Segment Anything glue on a tiny randomly initialised SAM loaded through the checkpoint path."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from _sam_helpers import LOOSE, brute_majority, tiny_sam
from structseg import sam as sam_module
from structseg.errors import CheckpointError, ConfigError, WeightsUnavailableError
from structseg.sam import load_sam, masks_to_segments, sam_column, sam_segments

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def tiny_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setitem(sam_module.EXTRA_SAM_TYPES, "tiny", tiny_sam)
    monkeypatch.setitem(sam_module.EXTRA_SAM_TYPES, "tiny_wide", partial(tiny_sam, dim=48))
    torch.manual_seed(0)
    path = tmp_path / "tiny_sam.pth"
    torch.save(tiny_sam().state_dict(), path)
    return path


def two_region_image() -> tuple[np.ndarray, np.ndarray]:
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    image[:, 32:] = (200, 180, 20)
    image[10:20, 5:15] = (30, 200, 90)
    truth = np.zeros((48, 64), dtype=np.int64)
    truth[:, 32:] = 1
    truth[10:20, 5:15] = 2
    truth[0, :] = 255
    return image, truth


def test_load_sam_reads_the_checkpoint(tiny_checkpoint: Path) -> None:
    sam = load_sam(tiny_checkpoint, "tiny")
    saved = torch.load(tiny_checkpoint, weights_only=True)
    for name, value in sam.state_dict().items():
        torch.testing.assert_close(value, saved[name])
    with pytest.raises(CheckpointError, match="does not fit SAM type 'tiny_wide'"):
        load_sam(tiny_checkpoint, "tiny_wide")
    with pytest.raises(ConfigError, match="unknown SAM model type 'vit_q'"):
        load_sam(tiny_checkpoint, "vit_q")


def test_sam_column_labels_segments_by_majority_truth(tiny_checkpoint: Path) -> None:
    image, truth = two_region_image()
    column = sam_column([image, image[:, ::-1].copy()], tiny_checkpoint, "tiny", [truth, truth[:, ::-1].copy()],
                        points_per_side=4, generator_kwargs=LOOSE, progress=False)
    sam = load_sam(tiny_checkpoint, "tiny")
    segments = sam_segments([image], sam, points_per_side=4, generator_kwargs=LOOSE, progress=False)[0]
    assert segments.max() >= 1  # the loose thresholds let random SAM propose masks
    assert len(column) == 2 and column[0].shape == truth.shape and column[0].dtype == np.int64
    np.testing.assert_array_equal(column[0], brute_majority(segments, truth))
    assert set(np.unique(column[1])) <= {0, 1, 2, 255}


def test_sam_column_without_truth(tiny_checkpoint: Path) -> None:
    image, truth = two_region_image()
    sam = load_sam(tiny_checkpoint, "tiny")
    panels = sam_column([torch.from_numpy(image).permute(2, 0, 1)], sam=sam, points_per_side=4,
                        generator_kwargs=LOOSE, progress=False)
    assert panels[0].shape == (48, 64, 3) and panels[0].dtype == np.uint8
    snapped = sam_column([image], sam=sam, prediction=[truth.clip(0, 2)], num_classes=3,
                         points_per_side=4, generator_kwargs=LOOSE, progress=False)
    segments = sam_segments([image], sam, points_per_side=4, generator_kwargs=LOOSE, progress=False)[0]
    np.testing.assert_array_equal(snapped[0], brute_majority(segments, truth.clip(0, 2)))


def test_missing_checkpoint_names_the_file_to_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRUCTSEG_SAM_DIR", str(tmp_path / "sam"))
    with pytest.raises(WeightsUnavailableError) as info:
        sam_column([np.zeros((8, 8, 3), np.uint8)], None, "vit_b")
    message = str(info.value)
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in message
    assert str(tmp_path / "sam" / "sam_vit_b_01ec64.pth") in message
    with pytest.raises(WeightsUnavailableError, match="sam_vit_h_4b8939.pth"):
        load_sam(tmp_path / "elsewhere.pth", "vit_h")


def test_masks_to_segments_paints_small_over_large_and_splits_the_rest() -> None:
    big = np.zeros((6, 8), bool)
    big[:, :4] = True
    small = np.zeros((6, 8), bool)
    small[2:4, 1:3] = True
    records = [{"segmentation": small, "area": 4}, {"segmentation": big, "area": 24}]
    segments = masks_to_segments(records, (6, 8))
    assert segments[2, 1] != segments[0, 0]  # the small mask stays visible inside the big one
    assert len(np.unique(segments[:, :4])) == 2
    assert len(np.unique(segments[:, 4:])) == 1  # the uncovered right half is one component
    assert segments.max() == 2 and segments.min() == 0
