"""COCO mask / box AP through pycocotools on in-memory annotations."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from structseg.errors import DataError
from structseg.instance.coco import coco_evaluate, encode_masks
from structseg.instance.targets import mask_boxes


def target(boxes: list[tuple[int, int, int, int]], labels: list[int], h: int = 40,
           w: int = 50) -> dict[str, torch.Tensor]:
    """Rectangular instances given as exclusive (x1, y1, x2, y2)."""
    masks = torch.zeros((len(boxes), h, w), dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        masks[i, y1:y2, x1:x2] = 1
    return {"boxes": mask_boxes(masks), "labels": torch.tensor(labels, dtype=torch.int64), "masks": masks}


def as_prediction(t: dict[str, torch.Tensor], scores: list[float] | None = None) -> dict[str, torch.Tensor]:
    """Mask R-CNN's output format: float (N, 1, H, W) mask probabilities and scores."""
    n = len(t["labels"])
    return {
        "boxes": t["boxes"].clone(), "labels": t["labels"].clone(),
        "scores": torch.tensor(scores if scores is not None else [1.0] * n),
        "masks": t["masks"][:, None].float() * 0.9,
    }


NAMES = ["disc", "square", "triangle"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside pycocotools.mask.decode
def test_encode_masks_round_trips() -> None:
    masks = torch.from_numpy(np.random.default_rng(0).random((3, 9, 11)) < 0.3).to(torch.uint8)
    rles = encode_masks(masks)
    assert all(isinstance(r["counts"], str) for r in rles)
    decoded = mask_utils.decode([{"size": r["size"], "counts": r["counts"].encode()} for r in rles])
    np.testing.assert_array_equal(decoded.transpose(2, 0, 1), masks.numpy())


def test_ap_is_one_when_predictions_equal_truth() -> None:
    targets = [
        target([(2, 3, 12, 15), (20, 5, 45, 30)], [1, 2]),
        target([(0, 0, 8, 8)], [3]),
        target([(10, 10, 30, 38), (31, 2, 49, 20), (1, 20, 9, 39)], [2, 2, 1]),
    ]
    results = coco_evaluate(targets, [as_prediction(t) for t in targets], NAMES)
    for kind in ("segm", "bbox"):
        assert results[kind]["AP"] == pytest.approx(1.0)
        assert results[kind]["AP50"] == pytest.approx(1.0) and results[kind]["AR100"] == pytest.approx(1.0)
        assert results[kind]["APl"] is None  # no object larger than 96^2 pixels: undefined, not -1


def test_partial_overlap_gives_hand_computed_ap() -> None:
    """IoU 0.64 (an 8x8 box inside a 10x10 one) matches at thresholds 0.50, 0.55, 0.60 only: AP = 3/10."""
    truth = [target([(10, 10, 20, 20)], [1])]
    pred = [as_prediction(target([(11, 11, 19, 19)], [1]))]
    results = coco_evaluate(truth, pred, NAMES)
    for kind in ("segm", "bbox"):
        assert results[kind]["AP"] == pytest.approx(0.3)
        assert results[kind]["AP50"] == pytest.approx(1.0) and results[kind]["AP75"] == pytest.approx(0.0)


def test_wrong_class_and_ranking_count() -> None:
    truth = [target([(2, 2, 12, 12), (20, 20, 30, 30)], [1, 1])]
    # a confident false positive ranked first: precisions 0, 1/2, 2/3 at recalls 0, 1/2, 1
    pred = as_prediction(target([(35, 2, 45, 12), (2, 2, 12, 12), (20, 20, 30, 30)], [1, 1, 1]), [0.9, 0.8, 0.7])
    ap = coco_evaluate(truth, [pred], NAMES, iou_types=("segm",))["segm"]["AP"]
    # COCO's precision envelope is 2/3 at every recall point, at every IoU threshold
    assert ap == pytest.approx(2 / 3, abs=1e-6)
    wrong = as_prediction(target([(2, 2, 12, 12), (20, 20, 30, 30)], [2, 2]))
    assert coco_evaluate(truth, [wrong], NAMES)["segm"]["AP"] == pytest.approx(0.0)


def test_no_predictions_scores_zero() -> None:
    truth = [target([(2, 2, 12, 12)], [1])]
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64),
             "scores": torch.zeros(0), "masks": torch.zeros((0, 1, 40, 50))}
    assert coco_evaluate(truth, [empty], NAMES)["segm"]["AP"] == pytest.approx(0.0)


def test_mismatched_lengths_are_an_error() -> None:
    with pytest.raises(DataError, match="2 ground-truth images but 1 predictions"):
        coco_evaluate([target([], []), target([], [])], [as_prediction(target([], []))], NAMES)
