"""Squared error against one-hot targets: the regression view of classification (Brier score per pixel)."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from structseg.losses.base import TINY, SegLoss, check_choice, one_hot


class MSELoss(SegLoss):
    """``sum_c (s_c - [y = c])^2`` per pixel, averaged over labeled pixels (class-weighted like cross-entropy).

    ``on="probs"`` (default) compares softmax probabilities, the Brier score, bounded in [0, 2]; ``on="logits"``
    regresses the raw scores onto the one-hot vector, as a linear least-squares classifier does.
    """

    name = "mse"

    def __init__(self, num_classes: int, *, on: str = "probs", ignore_index: int = 255,
                 class_weights: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__(num_classes, ignore_index=ignore_index, class_weights=class_weights)
        self.on = check_choice(self.name, "on", on, ("probs", "logits"))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, on={self.on!r}"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target, valid = self.prepare(logits, target)
        scores = logits.softmax(1) if self.on == "probs" else logits
        y = one_hot(target, valid, self.num_classes, scores.dtype)
        per_pixel = (scores - y).square().sum(1)
        weights = self.pixel_weights(target, valid).to(scores.dtype)
        return (per_pixel * weights).where(valid, 0.0).sum() / weights.sum().clamp_min(TINY)
