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
