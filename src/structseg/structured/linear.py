"""The per-pixel pieces of the SVM heads: the Crammer-Singer hinge, the linear SVM head, and the prior.

``prior`` (everywhere in :mod:`structseg.structured.models`) is a network's own logits at any resolution, added to a
head's scores by :func:`add_prior`: area-pooled to a coarser grid, bilinear to a finer one.
"""
from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structseg._shapes import spatial_size
from structseg.errors import SolverError
from structseg.models.ops import guard_bf16_conv_defect

__all__ = ["LinearSVMHead", "add_prior", "hamming_costs", "multiclass_hinge_loss", "scores_at"]


def multiclass_hinge_loss(
    scores: Tensor, target: Tensor, ignore_index: int = 255, margin: float = 1.0, reduction: str = "mean",
    class_weights: Tensor | None = None,
) -> Tensor:
    """Crammer-Singer hinge per pixel: ``max_c (s_c + margin [c != y]) - s_y`` over non-ignored pixels.

    ``scores`` (N, K, ...), ``target`` (N, ...). ``reduction``: "mean" | "sum" | "none". ``class_weights`` (K,)
    weight each pixel by its true class ("mean" is then the weighted mean), so small classes are not given up.
    """
    if scores.shape[0] != target.shape[0] or scores.shape[2:] != target.shape[1:]:
        raise SolverError(f"scores {tuple(scores.shape)} and target {tuple(target.shape)} do not match")
    k = scores.shape[1]
    valid = target != ignore_index
    if ((target < 0) | (target >= k))[valid].any():
        raise SolverError(f"target labels must lie in 0..{k - 1} or equal ignore_index={ignore_index}")
    t = torch.where(valid, target, torch.zeros_like(target)).unsqueeze(1)
    true_score = scores.gather(1, t)
    augmented = scores + margin * (1.0 - F.one_hot(t.squeeze(1), k).movedim(-1, 1).to(scores.dtype))
    per_pixel = (augmented.max(dim=1, keepdim=True).values - true_score).squeeze(1) * valid
    weight = valid.to(scores.dtype)
    if class_weights is not None:
        weight = weight * class_weights.to(scores.device, scores.dtype)[t.squeeze(1)]
        per_pixel = per_pixel * weight
    if reduction == "none":
        return per_pixel
    if reduction == "sum":
        return per_pixel.sum()
    return per_pixel.sum() / weight.sum().clamp(min=1e-12 if class_weights is not None else 1)


def hamming_costs(class_weights: Tensor | None, margin: float, labels: Tensor, valid: Tensor,
                  num_classes: int) -> tuple[Tensor, Tensor]:
    """The structured hinge's Hamming loss: what a wrong node of each true class costs (K,), ``margin`` times its
    class weight (1 without weights), and each image's normalizer (N,): its count of labelled nodes, weighted by
    class when weights are given (never scaled by ``margin``). ``labels``/``valid``: (N, P)."""
    if class_weights is None:
        costs = torch.full((num_classes,), float(margin), dtype=torch.float64, device=labels.device)
        return costs, valid.sum(1).clamp(min=1).double()
    w = class_weights.to(labels.device, torch.float64)
    return margin * w, (w[labels] * valid).sum(1).clamp(min=1e-12)


def scores_at(scores: Tensor, size: tuple[int, int] | None) -> Tensor:
    """Per-node scores (N, D, h, w) at ``size`` (None: as they are), bilinearly: linear in the features."""
    if size is None or spatial_size(scores) == tuple(size):
        return scores
    return F.interpolate(scores, size=size, mode="bilinear", align_corners=False)


def add_prior(scores: Tensor, prior: Tensor | None) -> Tensor:
    """``scores + prior``, the prior brought to the scores' size: area-pooled when coarser, bilinear otherwise."""
    if prior is None:
        return scores
    size = spatial_size(scores)
    if spatial_size(prior) != size:
        finer = prior.shape[-2] >= size[0] and prior.shape[-1] >= size[1]
        prior = (F.adaptive_avg_pool2d(prior, size) if finer
                 else F.interpolate(prior, size=size, mode="bilinear", align_corners=False))
    return scores + prior.to(scores.dtype)


class LinearSVMHead(nn.Module):
    """Per-pixel linear multiclass SVM: a 1x1 convolution trained with :func:`multiclass_hinge_loss`.

    The loss compares scores bilinearly upsampled to the target's size (still
    linear in the features). ``freeze`` the base model for the frozen-feature setting.
    """

    class_weights: Tensor | None

    def __init__(self, in_channels: int, num_classes: int, *, ignore_index: int = 255, margin: float = 1.0,
                 class_weights: Tensor | None = None) -> None:
        super().__init__()
        self.classifier = guard_bf16_conv_defect(nn.Conv2d(in_channels, num_classes, kernel_size=1))
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.margin = margin
        # the loss's per-class weights: training data, not model weights (left out of the state dict)
        self.register_buffer("class_weights", None if class_weights is None else torch.as_tensor(
            class_weights, dtype=torch.float32), persistent=False)

    def forward(self, features: Tensor, prior: Tensor | None = None) -> Tensor:
        return add_prior(cast(Tensor, self.classifier(features)), prior)

    def scores(self, features: Tensor, size: tuple[int, int] | None = None, prior: Tensor | None = None) -> Tensor:
        """Scores at ``size`` (default: the grid): the grid's scores upsampled bilinearly, plus ``prior``."""
        return add_prior(scores_at(cast(Tensor, self.classifier(features)), size), prior)

    def loss(self, features: Tensor, target: Tensor, prior: Tensor | None = None) -> Tensor:
        return multiclass_hinge_loss(self.scores(features, spatial_size(target), prior), target, self.ignore_index,
                                     self.margin, class_weights=self.class_weights)

    @torch.no_grad()
    def predict(self, features: Tensor, size: tuple[int, int] | None = None, prior: Tensor | None = None,
                **_: Any) -> Tensor:
        return self.scores(features, size, prior).argmax(1)
