"""Pixel-wise cross-entropy and its online hard-example mining (OHEM) variant."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from structseg.losses.base import TINY, SegLoss, check_int, check_number


class CrossEntropyLoss(SegLoss):
    """Softmax cross-entropy averaged over non-ignored pixels, weighted by class.

    Same value as ``F.cross_entropy(..., reduction="mean")`` (sum of per-pixel losses
    divided by the sum of the pixels' class weights; label smoothing mixes in
    ``label_smoothing / K`` of every class), except that a batch whose pixels are
    all ignored gives 0 instead of NaN.
    """

    name = "cross_entropy"

    def __init__(self, num_classes: int, *, label_smoothing: float = 0.0, ignore_index: int = 255,
                 class_weights: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__(num_classes, ignore_index=ignore_index, class_weights=class_weights)
        self.label_smoothing = check_number(self.name, "label_smoothing", label_smoothing,
                                            low=0.0, high=1.0, high_open=True)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, label_smoothing={self.label_smoothing}"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target, valid = self.prepare(logits, target)
        weight = None if self.class_weights is None else self.class_weights.to(logits.dtype)
        per_pixel = F.cross_entropy(logits, target, weight=weight, reduction="none",
                                    label_smoothing=self.label_smoothing)
        denom = self.pixel_weights(target, valid).sum()
        return per_pixel.where(valid, 0.0).sum() / denom.clamp_min(TINY)


class OhemCrossEntropyLoss(SegLoss):
    """Cross-entropy over the hard pixels only (Shrivastava et al.'s OHEM, as used in PSPNet/OCRNet).

    A pixel is hard when the softmax probability of its true class is below
    ``thresh`` (its loss is above ``-log(thresh)``). When fewer than ``min_kept``
    pixels are hard, the ``min_kept`` pixels with the lowest probability are kept
    instead (ties may add a few). Kept pixels are averaged as in
    :class:`CrossEntropyLoss`; the selection itself carries no gradient.
    """

    name = "ohem"

    def __init__(self, num_classes: int, *, thresh: float = 0.7, min_kept: int = 100_000,
                 ignore_index: int = 255, class_weights: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__(num_classes, ignore_index=ignore_index, class_weights=class_weights)
        self.thresh = check_number(self.name, "thresh", thresh, low=0.0, high=1.0, low_open=True)
        self.min_kept = check_int(self.name, "min_kept", min_kept, low=0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, thresh={self.thresh}, min_kept={self.min_kept}"

    @torch.no_grad()
    def hard_mask(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Boolean (N,H,W) mask of the pixels the loss keeps."""
        prob = F.softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
        keep = valid & (prob < self.thresh)
        n_valid = int(valid.sum())
        if self.min_kept > 0 and n_valid > 0:
            k = min(self.min_kept, n_valid)
            kth = prob[valid].kthvalue(k).values
            keep |= valid & (prob <= kth)
        return keep

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target, valid = self.prepare(logits, target)
        keep = self.hard_mask(logits.detach(), target, valid)
        weight = None if self.class_weights is None else self.class_weights.to(logits.dtype)
        per_pixel = F.cross_entropy(logits, target, weight=weight, reduction="none")
        denom = self.pixel_weights(target, keep).sum()
        return per_pixel.where(keep, 0.0).sum() / denom.clamp_min(TINY)
