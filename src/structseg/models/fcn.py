"""Fully convolutional networks (Long, Shelhamer, Darrell 2015).

* :class:`FCN` is torchvision's variant: an :class:`FCNHead` on the last level of a (dilated) ResNet
  or MobileNet, bilinear upsampling of the logits.
* :class:`FCNSkip` is the paper's FCN-32s/16s/8s: 1x1 score layers on the final level (fc7), pool4
  and pool3, fused coarse-to-fine through transposed convolutions initialised to bilinear
  interpolation. As in the paper, the x2 upsamplings are learned and the final one is fixed
  (``learnable_upsample`` overrides both), and the skip score layers start at zero so training
  begins from the FCN-32s prediction.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structseg.errors import ConfigError
from structseg.models.backbones import Backbone
from structseg.models.base import FCNHead, SegmentationModel

__all__ = ["FCN", "FCNSkip", "BilinearUpsample", "bilinear_kernel"]


def bilinear_kernel(size: int) -> Tensor:
    """2-D bilinear interpolation kernel of side ``size`` (= 2 x upsampling factor)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    ramp = 1 - (torch.arange(size, dtype=torch.float32) - center).abs() / factor
    return ramp[:, None] * ramp[None, :]


class BilinearUpsample(nn.Module):
    """Upsample by an integer ``factor`` with a transposed convolution initialised to bilinear.

    Output size is exactly ``factor`` x input size; away from the borders it equals
    ``F.interpolate(mode="bilinear", align_corners=False)``. A frozen one is a per-channel fixed
    filter held as a buffer; a learnable one is a full channels x channels kernel starting diagonal.
    """

    def __init__(self, channels: int, factor: int, learnable: bool = True) -> None:
        super().__init__()
        self.factor, self.learnable = factor, learnable
        kernel = bilinear_kernel(2 * factor)
        if learnable:
            weight = torch.zeros(channels, channels, 2 * factor, 2 * factor)
            weight[range(channels), range(channels)] = kernel
            self.weight = nn.Parameter(weight)
        else:
            self.register_buffer("weight", kernel.expand(channels, 1, -1, -1).clone())
        self.groups = 1 if learnable else channels

    def forward(self, x: Tensor) -> Tensor:
        return F.conv_transpose2d(x, self.weight.to(x.dtype), stride=self.factor, padding=self.factor // 2,
                                  groups=self.groups)


class FCN(SegmentationModel):
    """``FCNHead`` on the backbone's final level, logits upsampled bilinearly (torchvision's fcn_resnet)."""

    def __init__(self, backbone: Backbone, num_classes: int, *, aux: bool = False) -> None:
        in_channels = backbone.channels[backbone.final_level]
        super().__init__(backbone, num_classes, feature_channels=max(in_channels // 4, 1), aux=aux)
        self.classifier = FCNHead(in_channels, num_classes)

    def decode(self, features: dict[str, Tensor], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        x = self.classifier.features(features[self.backbone.final_level])
        return x, self.classifier.classify(x)


def _score(in_channels: int, num_classes: int, zero: bool) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, num_classes, 1)
    if zero:
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)  # type: ignore[arg-type]
    return conv


class FCNSkip(SegmentationModel):
    """FCN-32s (``stride=32``), FCN-16s (16) or FCN-8s (8) on a backbone of output stride 32.

    The input is padded to a multiple of 32 so that every level fuses without cropping.
    """

    full_resolution_logits = True

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        stride: int = 8,
        aux: bool = False,
        learnable_upsample: bool | None = None,
    ) -> None:
        if stride not in (32, 16, 8):
            raise ConfigError(f"FCN stride must be 32, 16 or 8, got {stride}")
        final = backbone.final_level
        super().__init__(backbone, num_classes, feature_channels=backbone.channels[final], aux=aux,
                         size_divisor=backbone.output_stride)
        inner = True if learnable_upsample is None else learnable_upsample
        self.stride = stride
        self.score_final = _score(backbone.channels[final], num_classes, zero=False)
        if stride <= 16:
            self.score_pool4 = _score(backbone.channels["c4"], num_classes, zero=True)
            self.up_final = BilinearUpsample(num_classes, 2, learnable=inner)
        if stride == 8:
            self.score_pool3 = _score(backbone.channels["c3"], num_classes, zero=True)
            self.up_pool4 = BilinearUpsample(num_classes, 2, learnable=inner)
        self.up_out = BilinearUpsample(num_classes, stride, learnable=bool(learnable_upsample))

    def decode(self, features: dict[str, Tensor], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        penultimate = features[self.backbone.final_level]
        score = self.score_final(penultimate)
        if self.stride <= 16:
            score = self.up_final(score) + self.score_pool4(features["c4"])
        if self.stride == 8:
            score = self.up_pool4(score) + self.score_pool3(features["c3"])
        return penultimate, self.up_out(score)
