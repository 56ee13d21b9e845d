"""Pictures of instance predictions: one color per instance, box, "class score" caption."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def draw_instances(
    image: torch.Tensor,
    prediction: dict[str, torch.Tensor],
    category_names: Sequence[str],
    *,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    alpha: float = 0.5,
    seed: int = 0,
    min_side: int = 256,
) -> np.ndarray:
    """RGB ``uint8``: ``image`` (uint8 or [0, 1] float, ``(3, H, W)``) with the kept instances.

    A prediction without ``scores`` (a ground-truth target) is drawn whole, captioned
    with class names only. Images smaller than ``min_side`` are enlarged by an integer
    factor (nearest neighbour) first, so that the bitmap-font captions stay readable.
    """
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    from structseg.classic.render import random_colors

    if image.is_floating_point():
        image = (image.clamp(0, 1) * 255).round()
    canvas = image.detach().cpu().to(torch.uint8)
    scores = prediction.get("scores")
    keep = scores >= score_threshold if scores is not None else torch.ones(len(prediction["labels"]), dtype=torch.bool)
    masks = prediction["masks"][keep].detach().cpu()
    if masks.dim() == 4:
        masks = masks[:, 0]
    masks = masks > mask_threshold if masks.is_floating_point() else masks.bool()
    boxes = prediction["boxes"][keep].detach().cpu().float()
    labels = prediction["labels"][keep].tolist()
    factor = max(1, -(-min_side // min(canvas.shape[-2:])))
    if factor > 1:
        canvas = canvas.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
        masks = masks.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
        boxes = boxes * factor
    if not labels:
        return canvas.permute(1, 2, 0).numpy()
    colors = [tuple(int(v) for v in c) for c in random_colors(len(labels), seed)]

    def name(label: int) -> str:
        return category_names[label - 1] if 1 <= label <= len(category_names) else f"class {label - 1}"

    captions = [name(lab) for lab in labels]
    if scores is not None:
        captions = [f"{c} {s:.2f}" for c, s in zip(captions, scores[keep].tolist())]
    canvas = draw_segmentation_masks(canvas, masks, alpha=alpha, colors=colors)
    canvas = draw_bounding_boxes(canvas, boxes, labels=captions, colors=colors, width=max(1, factor // 2))
    return canvas.permute(1, 2, 0).numpy()
