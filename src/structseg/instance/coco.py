"""Mask and box AP with pycocotools, from in-memory targets and predictions.

Ground truth and predictions are turned into COCO annotation dicts (RLE masks,
``x, y, w, h`` boxes) in memory, so no JSON file is written; image ``i`` of the
lists is COCO image ``i``; detection label ``l`` is category ``l``.
"""
from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from structseg.errors import DataError

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def encode_masks(masks: torch.Tensor) -> list[dict[str, Any]]:
    """COCO RLEs (counts as str) of binary masks ``(N, H, W)``."""
    from pycocotools import mask as mask_utils

    if masks.shape[0] == 0:
        return []
    array = np.asfortranarray(masks.detach().cpu().numpy().astype(np.uint8).transpose(1, 2, 0))
    rles = mask_utils.encode(array)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def _xywh(boxes: torch.Tensor) -> list[list[float]]:
    b = boxes.detach().cpu().double()
    return torch.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1).tolist()


def _binary(masks: torch.Tensor, threshold: float) -> torch.Tensor:
    """Mask R-CNN gives ``(N, 1, H, W)`` probabilities; targets give ``(N, H, W)`` uint8."""
    if masks.dim() == 4:
        masks = masks[:, 0]
    return masks > threshold if masks.is_floating_point() else masks.bool()


def _annotations(items: Sequence[dict[str, torch.Tensor]], *, scores: bool,
                 mask_threshold: float) -> list[dict[str, Any]]:
    anns: list[dict[str, Any]] = []
    for image_id, item in enumerate(items):
        masks = _binary(item["masks"], mask_threshold)
        labels = item["labels"].tolist()
        if not (len(labels) == masks.shape[0] == item["boxes"].shape[0]):
            raise DataError(
                f"image {image_id}: {len(labels)} labels, {masks.shape[0]} masks and {item['boxes'].shape[0]} boxes"
            )
        areas = masks.flatten(1).sum(1).tolist() if len(labels) else []
        score_list = item["scores"].tolist() if scores else [1.0] * len(labels)
        for label, rle, box, area, score in zip(labels, encode_masks(masks), _xywh(item["boxes"]), areas, score_list):
            ann = {
                "id": len(anns) + 1, "image_id": image_id, "category_id": int(label),
                "segmentation": rle, "bbox": box, "area": float(area), "iscrowd": 0,
            }
            if scores:
                ann["score"] = float(score)
            anns.append(ann)
    return anns


def _coco(images: list[dict[str, Any]], categories: list[dict[str, Any]], anns: list[dict[str, Any]]) -> Any:
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": images, "categories": categories, "annotations": anns}
        coco.createIndex()
    return coco


def coco_evaluate(
    targets: Sequence[dict[str, torch.Tensor]],
    predictions: Sequence[dict[str, torch.Tensor]],
    category_names: Sequence[str],
    *,
    iou_types: Sequence[str] = ("segm", "bbox"),
    mask_threshold: float = 0.5,
) -> dict[str, dict[str, float | None]]:
    """COCO AP / AR per IoU type (``segm``: mask AP, ``bbox``: box AP), ``None`` where undefined.

    ``targets[i]`` and ``predictions[i]`` describe the same image; predictions hold
    ``boxes, labels, scores, masks`` as Mask R-CNN returns them. Category ``l`` is
    ``category_names[l - 1]``.
    """
    from pycocotools.cocoeval import COCOeval

    if len(targets) != len(predictions):
        raise DataError(f"{len(targets)} ground-truth images but {len(predictions)} predictions")
    images = []
    for i, t in enumerate(targets):
        h, w = t["masks"].shape[-2:]
        images.append({"id": i, "height": int(h), "width": int(w)})
    categories = [{"id": i + 1, "name": str(n)} for i, n in enumerate(category_names)]
    gt = _coco(images, categories, _annotations(targets, scores=False, mask_threshold=0.5))
    dt = _coco(images, categories, _annotations(predictions, scores=True, mask_threshold=mask_threshold))
    results: dict[str, dict[str, float | None]] = {}
    for iou_type in iou_types:
        if iou_type not in ("segm", "bbox"):
            raise DataError(f"iou type must be 'segm' or 'bbox', got {iou_type!r}")
        evaluator = COCOeval(gt, dt, iouType=iou_type)
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        results[iou_type] = {
            name: (None if value < 0 or math.isnan(value) else float(value))
            for name, value in zip(STAT_NAMES, evaluator.stats)
        }
    return results


def format_ap(results: dict[str, dict[str, float | None]]) -> str:
    """Small fixed-width table: one row per IoU type, AP / AP50 / AP75 / AR100 in %."""
    cols = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
    lines = [f"{'':6}" + "".join(f"{c:>8}" for c in cols)]
    for kind, stats in results.items():
        cells = "".join(f"{'-':>8}" if (v := stats[c]) is None else f"{100 * v:8.2f}" for c in cols)
        lines.append(f"{kind:6}{cells}")
    return "\n".join(lines)
