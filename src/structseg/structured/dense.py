"""A structured SVM with the dense CRF's pairwise terms (``model.head=ssvm``, ``model.structured.pairwise=dense``).

Every pair of the input's pixels is an edge, weighted by the dense CRF's two normalized Gaussian kernels
(smoothness and appearance, Krähenbühl & Koltun 2011; widths from the run's ``crf:`` section), and each kernel ``m``
has a K x K penalty table ``mu_m`` that the structured hinge learns. The score of a labelling ``y`` (one-hot ``Y``,
(P, K) per image) is

    S(y) = <U, Y> - 1/2 sum_m <Y, (k_m Y) mu_m>

linear in the penalties (the joint feature map is the K x K table ``Y^T k_m Y``), so the hinge
``max_y [Delta(y, y*) + S(y)] - S(y*)`` is a structured SVM's. Neither the MAP nor the loss-augmented maximiser is
tractable on a dense graph: both come from parallel mean-field (:func:`~structseg.crf.meanfield.mean_field_scores`,
whose fixed point is that of this score) and the argmax of its beliefs. The loss-augmented step keeps, per image, the
best of that labelling, the augmented unaries' argmax and the truth, so the hinge is a lower bound on the exact one
and never negative. Penalties start at 0: the head starts as its unaries.

Unlabelled pixels carry no unary, pairwise or Hamming term in the hinge (their one-hot rows are zero); the
mean-field pass that proposes the maximiser still sees them with their unaries.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structseg._shapes import spatial_size
from structseg.crf.kernels import GaussianKernels
from structseg.crf.layer import dense_kernels
from structseg.crf.meanfield import mean_field_scores
from structseg.crf.params import DenseCRFConfig
from structseg.errors import ConfigError, SolverError
from structseg.graph import downsample_labels
from structseg.models.ops import guard_bf16_conv_defect
from structseg.structured.linear import add_prior, hamming_costs, scores_at

__all__ = ["PENALTY_STEP", "DenseSSVMHead"]

# The penalties are PENALTY_STEP times their parameters, so they move at that multiple of ``optim.lr``: a few numbers
# that must grow to about a logit share the rate of a unary layer that must move slowly.
PENALTY_STEP = 20.0


class DenseSSVMHead(nn.Module):
    """Unary scores (a 1x1 convolution on the features, plus the ``prior``) and dense pairwise terms on the input's
    pixels, trained with the structured hinge; same protocol as :class:`~structseg.structured.models.
    StructuredSVMHead` (``head(features)``, ``loss``, ``predict``; the methods take the network's input as ``image``).

    ``crf``: kernel widths and mean-field ``iterations`` (its compatibilities are not used: the penalties are learnt
    from 0). ``mean``/``std``: the input's normalization, undone to read colours. ``margin`` and ``class_weights``
    set a wrong pixel's Hamming loss, as for the sparse head; ``loss_normalize`` divides each image's hinge by its
    (weighted) count of labelled pixels.
    """

    needs_image = True
    class_weights: Tensor | None

    def __init__(self, in_channels: int, num_classes: int, *, crf: DenseCRFConfig | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, ignore_index: int = 255,
                 class_weights: Tensor | None = None, loss_normalize: bool = True, margin: float = 1.0) -> None:
        super().__init__()
        if margin <= 0:
            raise ConfigError(f"model.structured.margin must be > 0, got {margin}")
        self.num_classes, self.ignore_index, self.margin = num_classes, ignore_index, float(margin)
        self.config = crf if crf is not None else DenseCRFConfig()
        self.mean, self.std = mean, std
        self.loss_normalize = loss_normalize
        self.unary = guard_bf16_conv_defect(nn.Conv2d(in_channels, num_classes, kernel_size=1))
        self.penalty = nn.Parameter(torch.zeros(2, num_classes, num_classes))  # (smoothness, appearance) x K x K
        self.register_buffer("class_weights", None if class_weights is None else torch.as_tensor(
            class_weights, dtype=torch.float32), persistent=False)

    def forward(self, features: Tensor, prior: Tensor | None = None) -> Tensor:
        """Unary scores (N, K, h, w) on the feature grid."""
        return add_prior(cast(Tensor, self.unary(features)), prior)

    def penalties(self) -> list[Tensor]:
        """The symmetric (K, K) penalty table of each kernel."""
        return [0.5 * PENALTY_STEP * (p + p.t()) for p in self.penalty]

    def kernels(self, image: Tensor) -> GaussianKernels:
        return dense_kernels(image, self.config, mean=self.mean, std=self.std)

    def unaries(self, features: Tensor, prior: Tensor | None, size: tuple[int, int]) -> Tensor:
        """Unary scores (N, K, H, W) on the input's pixels."""
        return add_prior(scores_at(cast(Tensor, self.unary(features)), size), prior)

    def mean_field(self, unary: Tensor, kernels: GaussianKernels) -> Tensor:
        """Mean-field scores (N, K, H, W) (log-beliefs up to a per-pixel constant) after ``crf.iterations`` steps."""
        n, k, h, w = unary.shape
        prior = unary.permute(1, 0, 2, 3).reshape(k, n * h * w)
        scores = mean_field_scores(prior, kernels, self.penalties(), self.config.iterations)
        return scores.view(k, n, h, w).permute(1, 0, 2, 3)

    def score(self, unary: Tensor, kernels: GaussianKernels, labels: Tensor, valid: Tensor | None = None) -> Tensor:
        """S(y) per image (N,) for labels (N, H*W) in 0..K-1; pixels where ``valid`` is False count 0."""
        n, k = unary.shape[:2]
        onehot = F.one_hot(labels, k).to(unary.dtype)
        if valid is not None:
            onehot = onehot * valid.unsqueeze(-1).to(unary.dtype)
        s = (unary.flatten(2).transpose(1, 2) * onehot).sum((1, 2))
        flat = onehot.reshape(-1, k)
        with torch.no_grad():  # the kernels are fixed: the filtered labels are constants of the score
            filtered = kernels.apply_each(flat)
        pair = sum(((f @ mu) * flat).sum(1) for f, mu in zip(filtered, self.penalties()))
        return s - 0.5 * cast(Tensor, pair).view(n, -1).sum(1)

    def loss(self, features: Tensor, target: Tensor, prior: Tensor | None = None,
             image: Tensor | None = None) -> Tensor:
        """Structured hinge against ``target`` (N, H', W') at any resolution (brought to the input's pixels)."""
        if image is None:
            raise ConfigError("model.structured.pairwise=dense needs the network's input (image=...)")
        size = spatial_size(image)
        k = self.num_classes
        y_star = downsample_labels(target, size, k, self.ignore_index).flatten(1)
        valid = (y_star != self.ignore_index) & (y_star >= 0) & (y_star < k)
        y_star = torch.where(valid, y_star, torch.zeros_like(y_star))
        costs, counts = hamming_costs(self.class_weights, self.margin, y_star, valid, k)
        unary = self.unaries(features, prior, size)
        if unary.shape[0] != y_star.shape[0]:
            raise SolverError(f"{unary.shape[0]} images but {y_star.shape[0]} targets")
        node_cost = costs.to(unary.dtype)[y_star] * valid  # (N, P): what a wrong label costs at each pixel
        kernels = self.kernels(image)
        with torch.no_grad():
            wrong = 1.0 - F.one_hot(y_star, k).to(unary.dtype).transpose(1, 2).reshape(unary.shape)
            augmented = unary + node_cost.view(-1, 1, *size) * wrong
            candidates = [self.mean_field(augmented, kernels).argmax(1).flatten(1), augmented.argmax(1).flatten(1)]
        truth = self.score(unary, kernels, y_star, valid)
        values = torch.stack([self.score(unary, kernels, y, valid) + ((y != y_star) * node_cost).sum(1)
                              for y in candidates])
        best = values.gather(0, values.detach().argmax(0, keepdim=True))[0]
        loss = (best - truth).clamp(min=0)  # below the truth: the truth is the maximiser, loss 0
        if self.loss_normalize:
            loss = loss / counts.to(loss)
        return loss.mean()

    @torch.no_grad()
    def predict(self, features: Tensor, size: tuple[int, int] | None = None, prior: Tensor | None = None,
                image: Tensor | None = None, **_: Any) -> Tensor:
        """Labels (N, *size) (default: the input's size): the argmax of the mean-field scores, bilinearly resized."""
        if image is None:
            raise ConfigError("model.structured.pairwise=dense needs the network's input (image=...)")
        scores = self.mean_field(self.unaries(features, prior, spatial_size(image)), self.kernels(image))
        return scores_at(scores, size).argmax(1)
