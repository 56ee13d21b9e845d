"""Region losses on softmax probabilities: soft Dice and soft IoU (Rahman & Wang, 2016).

Both sum over pixels, per class, either over the whole batch or per image,
then average ``1 - score`` over the classes that count: with
``classes="present"`` those occurring in the (non-ignored) target, with
``classes="all"`` every class of an image that has a valid pixel.
Ignored pixels are masked out of probabilities and targets alike.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from structseg.losses.base import TINY, ClassSetLoss, check_number, one_hot


class _RegionLoss(ClassSetLoss):
    """Soft region overlap: ``1 - score(intersection, sum p, sum y)`` per class, ``smooth`` added to both sides of
    the ratio (``default_smooth`` when None)."""

    default_smooth = 0.0

    def __init__(self, num_classes: int, *, smooth: float | None = None, classes: str = "present",
                 per_image: bool = False, ignore_index: int = 255,
                 class_weights: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__(num_classes, classes=classes, per_image=per_image, ignore_index=ignore_index,
                         class_weights=class_weights)
        self.smooth = check_number(self.name, "smooth", self.default_smooth if smooth is None else smooth, low=0.0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, smooth={self.smooth}"

    def score(self, intersection: torch.Tensor, prob_sum: torch.Tensor, target_sum: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target, valid = self.prepare(logits, target)
        prob = F.softmax(logits, dim=1) * valid.unsqueeze(1)
        y = one_hot(target, valid, self.num_classes, prob.dtype)
        dims = tuple(range(2, logits.dim())) if self.per_image else (0, *range(2, logits.dim()))
        intersection = (prob * y).sum(dims)
        prob_sum = prob.sum(dims)
        target_sum = y.sum(dims)
        loss = 1.0 - self.score(intersection, prob_sum, target_sum)  # (K,) or (N, K)

        if self.classes == "present":
            counted = target_sum > 0
        else:
            has_pixels = valid.flatten(1).any(1) if self.per_image else valid.any().view(1)
            counted = has_pixels.unsqueeze(-1).expand(-1, self.num_classes).reshape(loss.shape)
        weight = counted.to(loss.dtype)
        if self.class_weights is not None:
            weight = weight * self.class_weights.to(loss.dtype)
        per_group = (loss * weight).where(counted, 0.0).sum(-1) / weight.sum(-1).clamp_min(TINY)
        if not self.per_image:
            return per_group
        images = weight.sum(-1) > 0
        return per_group.where(images, 0.0).sum() / images.sum().clamp_min(1)


class DiceLoss(_RegionLoss):
    """``1 - (2 I + smooth) / (sum p + sum y + smooth)`` averaged over counted classes."""

    name = "dice"
    default_smooth = 1.0

    def score(self, intersection: torch.Tensor, prob_sum: torch.Tensor, target_sum: torch.Tensor) -> torch.Tensor:
        return (2 * intersection + self.smooth) / (prob_sum + target_sum + self.smooth).clamp_min(TINY)


class SoftIoULoss(_RegionLoss):
    """``1 - I / U`` with ``I = sum p y`` and ``U = sum (p + y - p y)`` (Rahman & Wang), over counted classes."""

    name = "soft_iou"
    default_smooth = 0.0

    def score(self, intersection: torch.Tensor, prob_sum: torch.Tensor, target_sum: torch.Tensor) -> torch.Tensor:
        union = prob_sum + target_sum - intersection
        return (intersection + self.smooth) / (union + self.smooth).clamp_min(TINY)
