"""A trained segmentation network with a structured layer on its features or logits (SVM heads, CRF layers)."""
from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structseg.errors import ConfigError

if TYPE_CHECKING:
    from structseg.models.base import SegmentationModel


def zero_layers(*layers: nn.Module) -> None:
    """Zero the weight and bias of each layer: a structured layer that starts by changing nothing."""
    with torch.no_grad():
        for layer in layers:
            for name in ("weight", "bias"):
                value = getattr(layer, name, None)
                if isinstance(value, Tensor):
                    value.zero_()


class NetworkWrapper(nn.Module):
    """Base of the models that put a structured layer on a network ``base`` (state-dict keys ``base.*``).

    ``backbone`` is the network's encoder, so the encoder keeps its reduced learning rate; :meth:`features` gives
    the network's penultimate features, average-pooled by ``feature_stride`` (a coarser, cheaper graph), with
    gradients into the network only when ``train_backbone`` (else the network is frozen, in eval mode).
    """

    def __init__(self, base: nn.Module, *, feature_stride: int = 1, train_backbone: bool = True,
                 needs_features: bool = True, what: str = "this head") -> None:
        super().__init__()
        if needs_features and (not hasattr(base, "forward_features")
                               or not isinstance(getattr(base, "feature_channels", None), int)):
            raise ConfigError(f"{what} needs a model with forward_features() and feature_channels")
        if int(feature_stride) < 1:
            raise ConfigError(f"{what}: feature_stride must be >= 1, got {feature_stride}")
        self.base = base
        self.feature_stride = int(feature_stride)
        self.train_backbone = train_backbone

    @property
    def backbone(self) -> nn.Module:
        return getattr(self.base, "backbone", self.base)

    def train(self, mode: bool = True) -> NetworkWrapper:
        """A frozen network (``train_backbone=False``) stays in eval mode: its BatchNorm statistics and dropout do
        not change while the structured layer trains."""
        super().train(mode)
        if not self.train_backbone:
            self.base.eval()
        return self

    def features(self, images: Tensor) -> Tensor:
        return self.features_and_logits(images)[0]

    def features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The pooled penultimate features and the network's own logits at the input size, from one pass."""
        network = cast("SegmentationModel", self.base)  # checked at construction
        with torch.set_grad_enabled(self.train_backbone and torch.is_grad_enabled()):
            out = network.forward_features(images)
        features = out["features"]
        if self.feature_stride > 1:
            features = F.avg_pool2d(features, self.feature_stride, self.feature_stride, ceil_mode=True)
        return features, out["out"]

    def cross_entropy(self, logits: Tensor, labels: Tensor, *, ignore_index: int | None = None) -> Tensor:
        """Cross-entropy of ``logits`` against ``labels``, weighted by the wrapper's ``class_weights`` (set by the
        trainer from ``data.class_weights``; None: unweighted), ignoring ``ignore_index`` (default: the wrapper's);
        a zero that keeps the graph when nothing is labelled."""
        if ignore_index is None:
            ignore_index = int(getattr(self, "ignore_index", 255))
        if not bool((labels != ignore_index).any()):
            return logits.sum() * 0.0
        weights = getattr(self, "class_weights", None)
        weight = None if weights is None else weights.to(logits)
        return F.cross_entropy(logits, labels, weight=weight, ignore_index=ignore_index)
