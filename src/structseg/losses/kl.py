"""KL divergence from soft targets (distillation, label distributions) to the softmax prediction."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from structseg.errors import DataError
from structseg.losses.base import TINY, SegLoss, check_logits, check_number, one_hot, upcast

SUM_TOLERANCE = 1e-3


class KLDivergenceLoss(SegLoss):
    """``KL(q || softmax(logits / T))`` per pixel, averaged over the pixels that count.

    ``target`` is either soft, (N,K,H,W) probabilities ``q`` (a pixel whose
    ``q`` is all zero is ignored, as is any pixel where the optional ``mask`` is
    False), or hard (N,H,W) labels (one-hot ``q``, ``ignore_index`` honoured,
    which makes the loss equal to cross-entropy). Each class term is multiplied
    by its class weight and the sum is divided by ``sum_i sum_k w_k q_ik`` (the
    number of counted pixels without weights). ``temperature`` T softens the
    prediction and scales the loss by T**2 (Hinton et al.); the target should be
    the teacher's softmax at the same T.
    """

    name = "kl"

    def __init__(self, num_classes: int, *, temperature: float = 1.0, ignore_index: int = 255,
                 class_weights: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__(num_classes, ignore_index=ignore_index, class_weights=class_weights)
        self.temperature = check_number(self.name, "temperature", temperature, low=0.0, low_open=True)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temperature={self.temperature}"

    def soft_target(self, logits: torch.Tensor, target: torch.Tensor,
                    mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Check the target; return probabilities ``q`` (N,K,...) and the valid-pixel mask (N,...)."""
        if not target.is_floating_point():
            logits, labels, valid = self.prepare(logits, target)
            q = one_hot(labels, valid, self.num_classes, logits.dtype)
        else:
            check_logits(self.name, logits, self.num_classes)
            if target.shape != logits.shape:
                raise DataError(
                    f"{self.name}: soft target shape {tuple(target.shape)} must equal "
                    f"logits shape {tuple(logits.shape)}"
                )
            q = target.detach().to(upcast(logits).dtype)
            sums = q.sum(1)
            valid = sums > 0
            bad_sum = valid & ((sums - 1.0).abs() > SUM_TOLERANCE)
            if bool((q < 0).any() | bad_sum.any() | ~torch.isfinite(q).all()):
                raise DataError(
                    f"{self.name}: soft target must hold finite probabilities >= 0 that sum to 1 "
                    "(or to 0 on ignored pixels) over the class dimension"
                )
        if mask is not None:
            if mask.shape != valid.shape:
                raise DataError(f"{self.name}: mask shape {tuple(mask.shape)} must be {tuple(valid.shape)}")
            valid = valid & mask.to(torch.bool)
        return q * valid.unsqueeze(1), valid

    def forward(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q, valid = self.soft_target(logits, target, mask)
        log_p = F.log_softmax(upcast(logits) / self.temperature, dim=1)
        terms = torch.where(q > 0, torch.xlogy(q, q) - q * log_p, 0.0)
        if self.class_weights is not None:
            shape = (1, self.num_classes) + (1,) * (q.dim() - 2)
            w = self.class_weights.to(q.dtype).view(shape)
            terms, q = terms * w, q * w
        total = terms.where(valid.unsqueeze(1), 0.0).sum()
        return total / q.sum().clamp_min(TINY) * self.temperature**2
