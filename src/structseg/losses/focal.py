"""Focal loss (Lin et al., 2017) for dense multi-class prediction."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from structseg.losses.base import TINY, SegLoss, check_class_vector, check_number


class FocalLoss(SegLoss):
    """``-alpha_y * (1 - p_y) ** gamma * log p_y`` averaged like :class:`CrossEntropyLoss`.

    ``gamma`` defaults to 2.0, the value Lin et al. found best; ``gamma=0`` with
    ``alpha=None`` is exactly cross-entropy (class weights included), so it is
    never a silent default. ``alpha`` is an optional per-class factor (K values);
    ``class_weights`` multiply as well and also set the normalizer (sum of the
    pixels' class weights), as in weighted cross-entropy. For ``0 < gamma < 1``
    the gradient is unbounded where ``p_y`` reaches 1.
    """

    name = "focal"
    alpha: torch.Tensor | None

    def __init__(self, num_classes: int, *, gamma: float = 2.0, alpha: Sequence[float] | None = None,
                 ignore_index: int = 255, class_weights: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__(num_classes, ignore_index=ignore_index, class_weights=class_weights)
        self.gamma = check_number(self.name, "gamma", gamma, low=0.0)
        self.register_buffer("alpha", check_class_vector(self.name, "alpha", alpha, num_classes))

    def extra_repr(self) -> str:
        alpha = None if self.alpha is None else [round(a, 4) for a in self.alpha.tolist()]
        return f"{super().extra_repr()}, gamma={self.gamma}, alpha={alpha}"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target, valid = self.prepare(logits, target)
        log_p = F.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
        per_pixel = -log_p
        if self.gamma != 0:
            per_pixel = per_pixel * (-torch.expm1(log_p)).clamp_min(0.0).pow(self.gamma)
        weights = self.pixel_weights(target, valid).to(logits.dtype)
        if self.alpha is not None:
            per_pixel = per_pixel * self.alpha.to(logits.dtype)[target]
        total = (per_pixel * weights).where(valid, 0.0).sum()
        return total / weights.sum().clamp_min(TINY)
