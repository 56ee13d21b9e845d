"""DeepLabV3 (Chen et al. 2017) and DeepLabV3+ (Chen et al. 2018).

DeepLabV3 is torchvision's layout (same modules, same parameter count): atrous spatial pyramid
pooling (ASPP) on the last level of a dilated backbone, a 3x3 conv and a 1x1 classifier. The atrous
rates follow the output stride: (6, 12, 18) at 16 and (12, 24, 36) at 8.

DeepLabV3+ adds a decoder: the ASPP output is upsampled to the stride-4 level, concatenated with
those low-level features projected to 48 channels, refined by a 3x3 conv and classified. As in
the paper, its ASPP and refinement use depthwise separable convolutions by default.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structseg.models.backbones import Backbone
from structseg.models.base import ClassifierHead, SegmentationModel

__all__ = [
    "ATROUS_RATES",
    "ASPPConv",
    "ASPPPooling",
    "ASPP",
    "DeepLabHead",
    "DeepLabHeadV3Plus",
    "DeepLabV3",
    "DeepLabV3Plus",
]

ATROUS_RATES: dict[int, tuple[int, int, int]] = {16: (6, 12, 18), 8: (12, 24, 36)}


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 1, dilation: int = 1,
                  separable: bool = False) -> list[nn.Module]:
    pad = dilation * (kernel // 2)
    if separable and kernel > 1:
        convs: list[nn.Module] = [
            nn.Conv2d(in_channels, in_channels, kernel, padding=pad, dilation=dilation, groups=in_channels,
                      bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
        ]
    else:
        convs = [nn.Conv2d(in_channels, out_channels, kernel, padding=pad, dilation=dilation, bias=False)]
    return [*convs, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class ASPPConv(nn.Sequential):
    """One 3x3 atrous branch of ASPP (optionally depthwise separable)."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int, separable: bool = False) -> None:
        super().__init__(*_conv_bn_relu(in_channels, out_channels, 3, dilation, separable))


class _PooledBatchNorm(nn.BatchNorm2d):
    """BatchNorm that uses its running statistics when a training batch has one value per channel.

    The image-pooling branch sees a 1x1 map, so a batch of one image would make BatchNorm fail.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class ASPPPooling(nn.Sequential):
    """Image-level branch: global average, 1x1 conv, broadcast back over the map."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            _PooledBatchNorm(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        for module in self:
            x = module(x)
        return x.expand(-1, -1, h, w)  # bilinear upsampling of a 1x1 map is a broadcast


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1 branch, one branch per rate, image pooling; projected to ``out_channels``."""

    def __init__(self, in_channels: int, atrous_rates: Sequence[int], out_channels: int = 256,
                 separable: bool = False) -> None:
        super().__init__()
        branches: list[nn.Module] = [nn.Sequential(*_conv_bn_relu(in_channels, out_channels))]
        branches += [ASPPConv(in_channels, out_channels, r, separable) for r in atrous_rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(*_conv_bn_relu(len(branches) * out_channels, out_channels), nn.Dropout(0.5))

    def forward(self, x: Tensor) -> Tensor:
        return cast(Tensor, self.project(torch.cat([branch(x) for branch in self.convs], dim=1)))


class DeepLabHead(ClassifierHead):
    """ASPP, 3x3 conv-BN-ReLU, 1x1 classifier (torchvision's DeepLabHead)."""

    def __init__(self, in_channels: int, num_classes: int, atrous_rates: Sequence[int] = (12, 24, 36)) -> None:
        super().__init__(ASPP(in_channels, atrous_rates), *_conv_bn_relu(256, 256, 3), nn.Conv2d(256, num_classes, 1))


class DeepLabHeadV3Plus(nn.Module):
    """DeepLabV3+ decoder: ASPP on high-level features fused with 48-channel low-level (stride 4) features."""

    def __init__(
        self,
        in_channels: int,
        low_channels: int,
        num_classes: int,
        atrous_rates: Sequence[int] = (6, 12, 18),
        *,
        separable: bool = True,
        low_proj_channels: int = 48,
        channels: int = 256,
    ) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, atrous_rates, channels, separable)
        self.project_low = nn.Sequential(*_conv_bn_relu(low_channels, low_proj_channels))
        self.refine = nn.Sequential(*_conv_bn_relu(channels + low_proj_channels, channels, 3, separable=separable))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def features(self, high: Tensor, low: Tensor) -> Tensor:
        low = self.project_low(low)
        high = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return cast(Tensor, self.refine(torch.cat([high, low], dim=1)))

    def forward(self, high: Tensor, low: Tensor) -> Tensor:
        return cast(Tensor, self.classifier(self.features(high, low)))


def _rates(backbone: Backbone, atrous_rates: Sequence[int] | None) -> tuple[int, ...]:
    if atrous_rates is not None:
        return tuple(atrous_rates)
    return ATROUS_RATES[backbone.output_stride]


class DeepLabV3(SegmentationModel):
    """DeepLabV3: :class:`DeepLabHead` on the final level of a dilated backbone."""

    def __init__(self, backbone: Backbone, num_classes: int, *, aux: bool = False,
                 atrous_rates: Sequence[int] | None = None) -> None:
        super().__init__(backbone, num_classes, feature_channels=256, aux=aux)
        self.classifier = DeepLabHead(backbone.channels[backbone.final_level], num_classes,
                                      _rates(backbone, atrous_rates))

    def decode(self, features: dict[str, Tensor], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        x = self.classifier.features(features[self.backbone.final_level])
        return x, self.classifier.classify(x)


class DeepLabV3Plus(SegmentationModel):
    """DeepLabV3+: :class:`DeepLabHeadV3Plus` on the final level and the stride-4 level c2."""

    def __init__(self, backbone: Backbone, num_classes: int, *, aux: bool = False,
                 atrous_rates: Sequence[int] | None = None, separable: bool = True) -> None:
        super().__init__(backbone, num_classes, feature_channels=256, aux=aux)
        self.classifier = DeepLabHeadV3Plus(
            backbone.channels[backbone.final_level], backbone.channels["c2"], num_classes,
            _rates(backbone, atrous_rates), separable=separable,
        )

    def decode(self, features: dict[str, Tensor], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        x = self.classifier.features(features[self.backbone.final_level], features["c2"])
        return x, self.classifier.classifier(x)
