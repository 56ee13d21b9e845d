"""Lovász-softmax loss (Berman, Rannen Triki & Blaschko, CVPR 2018).

For class c, the pixel errors ``m_i = |[y_i = c] - p_i,c|`` are sorted in
decreasing order; the loss is their dot product with the increments of the
Jaccard loss ``Delta(S) = |S| / |F_c ∪ S|`` along that order (F_c: pixels of
class c, S: the errors taken so far). This is the Lovász extension of the
Jaccard loss: on one-hot probabilities it equals ``1 - IoU_c`` exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from structseg.losses.base import TINY, ClassSetLoss


def jaccard_increments(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Increments of the Jaccard loss along the rows of ``fg_sorted`` (P, K), per column.

    Row i holds ``Delta(first i+1 pixels) - Delta(first i pixels)`` where ``Delta``
    counts a fg pixel as a missed true pixel and a bg pixel as a false positive.
    """
    n_fg = fg_sorted.sum(0)
    missed = fg_sorted.cumsum(0)                 # true pixels of c among the errors so far
    false_pos = (1.0 - fg_sorted).cumsum(0)      # other pixels among the errors so far
    union = n_fg + false_pos
    loss = 1.0 - (n_fg - missed) / union.clamp_min(TINY)
    return torch.cat([loss[:1], loss[1:] - loss[:-1]], dim=0)


def lovasz_per_class(prob: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lovász-softmax loss of each class and whether it occurs, for flat ``prob`` (P, K) and ``labels`` (P,)."""
    k = prob.shape[1]
    fg = F.one_hot(labels, k).to(prob.dtype)
    errors = (fg - prob).abs()
    errors_sorted, order = errors.sort(dim=0, descending=True)
    fg_sorted = fg.gather(0, order)
    losses = (errors_sorted * jaccard_increments(fg_sorted)).sum(0)
    return losses, fg.sum(0) > 0


class LovaszSoftmaxLoss(ClassSetLoss):
    """Mean Lovász-softmax loss over classes (``"present"`` in the target, or ``"all"``).

    With ``per_image`` the loss is computed on each image and averaged over the
    images that have a counted class; otherwise on the batch as one set of pixels.
    Class weights make the mean over classes a weighted mean.
    """

    name = "lovasz"

    def _mean_over_classes(self, prob: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, weight total) of one set of valid pixels; weight total 0 means nothing counted."""
        if labels.numel() == 0:
            zero = prob.sum() * 0.0
            return zero, zero.detach()
        losses, present = lovasz_per_class(prob, labels)
        weight = present.to(prob.dtype) if self.classes == "present" else torch.ones_like(losses)
        if self.class_weights is not None:
            weight = weight * self.class_weights.to(prob.dtype)
        total = weight.sum()
        return (losses * weight).sum() / total.clamp_min(TINY), total

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target, valid = self.prepare(logits, target)
        prob = F.softmax(logits, dim=1).movedim(1, -1)  # (N, ..., K)
        if not self.per_image:
            return self._mean_over_classes(prob[valid], target[valid])[0]
        losses, counted = [], []
        for n in range(prob.shape[0]):
            loss, total = self._mean_over_classes(prob[n][valid[n]], target[n][valid[n]])
            losses.append(loss)
            counted.append(total > 0)
        losses_t, counted_t = torch.stack(losses), torch.stack(counted)
        return losses_t.where(counted_t, 0.0).sum() / counted_t.sum().clamp_min(1)
