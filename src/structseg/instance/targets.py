"""Detection targets (boxes, labels, masks) from instance-id and class maps.

Label convention: an instance of semantic class ``c`` gets detection label ``c + 1``;
label 0 is torchvision's background. A Mask R-CNN for a labeling scheme with ``K``
classes therefore has ``K + 1`` outputs, and COCO category ``c + 1`` is class ``c``.
Boxes are ``(x1, y1, x2, y2)`` float pixels with exclusive ``x2, y2`` (COCO's
``x, y, w, h`` is ``x1, y1, x2 - x1, y2 - y1``).
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from structseg.errors import DataError


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes ``(N, 4)`` float32 of boolean/uint8 masks ``(N, H, W)``, exclusive max corner."""
    if masks.numel() == 0 or masks.shape[0] == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    masks = masks.bool()
    boxes = torch.zeros((masks.shape[0], 4), dtype=torch.float32)
    for i, m in enumerate(masks):
        ys = torch.nonzero(m.any(1)).flatten()
        xs = torch.nonzero(m.any(0)).flatten()
        if len(xs):
            boxes[i] = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)
    return boxes


def _long_tensor(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array.long()
    return torch.from_numpy(np.array(array, dtype=np.int64))


def empty_target(height: int, width: int) -> dict[str, torch.Tensor]:
    """A target with no instance (a negative image for Mask R-CNN)."""
    return {
        "boxes": torch.zeros((0, 4), dtype=torch.float32),
        "labels": torch.zeros((0,), dtype=torch.int64),
        "masks": torch.zeros((0, height, width), dtype=torch.uint8),
    }


def targets_from_maps(
    instance_map: np.ndarray | torch.Tensor,
    class_map: np.ndarray | torch.Tensor | None = None,
    *,
    instance_classes: dict[int, int] | None = None,
    ignore_index: int = 255,
    background: Iterable[int] = (0,),
    min_area: int = 1,
) -> dict[str, torch.Tensor]:
    """Boxes, labels and masks of every instance in an id map.

    ``instance_map`` holds 0 where there is no instance, ``ignore_index`` on void
    (VOC's 255 borders: part of no mask) and instance ids elsewhere. An instance's
    class is ``instance_classes[id]`` when given, else the majority of ``class_map``
    under it (ignored pixels do not vote). Instances of a ``background`` class, with
    no class, or smaller than ``min_area`` pixels are dropped.
    """
    inst = _long_tensor(instance_map)
    if inst.dim() != 2:
        raise DataError(f"instance map must be (H, W), got shape {tuple(inst.shape)}")
    cls_map = None
    if class_map is not None:
        cls_map = _long_tensor(class_map)
        if cls_map.shape != inst.shape:
            raise DataError(f"class map shape {tuple(cls_map.shape)} differs from instance map {tuple(inst.shape)}")
    elif instance_classes is None:
        raise DataError("targets_from_maps needs a class map or instance_classes")
    skip = set(int(b) for b in background)
    masks, labels = [], []
    for iid in torch.unique(inst).tolist():
        if iid == 0 or iid == ignore_index:
            continue
        mask = inst == iid
        if int(mask.sum()) < min_area:
            continue
        if instance_classes is not None and iid in instance_classes:
            cls = int(instance_classes[iid])
        elif cls_map is not None:
            votes = cls_map[mask]
            votes = votes[(votes != ignore_index) & (votes >= 0)]
            if votes.numel() == 0:
                continue
            cls = int(torch.bincount(votes).argmax())
        else:
            raise DataError(f"instance id {iid} has no entry in instance_classes and there is no class map")
        if cls < 0:
            raise DataError(f"instance id {iid} has negative class {cls}")
        if cls in skip:
            continue
        masks.append(mask)
        labels.append(cls + 1)
    h, w = inst.shape
    if not masks:
        return empty_target(h, w)
    stacked = torch.stack(masks).to(torch.uint8)
    return {"boxes": mask_boxes(stacked), "labels": torch.tensor(labels, dtype=torch.int64), "masks": stacked}
