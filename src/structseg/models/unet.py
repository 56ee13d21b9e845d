"""U-Net (Ronneberger et al. 2015): the classic encoder-decoder, and a variant on a ResNet encoder.

The classic network doubles its channels at each of four 2x2 max-poolings, then mirrors back with
2x2 transposed convolutions and concatenated skips (convolutions carry BatchNorm, a modern
default). :class:`UNetResNet` puts the same kind of decoder on a torchvision ResNet, upsampling
each step to the size of its skip so that any input size works without padding.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structseg.errors import ConfigError
from structseg.models.backbones import Backbone
from structseg.models.base import SegmentationModel

__all__ = ["DoubleConv", "UNetEncoder", "UNet", "UNetResNet"]


class DoubleConv(nn.Sequential):
    """Two (3x3 conv, BN, ReLU) layers."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UNetEncoder(Backbone):
    """The U-Net contracting path; level ``cN`` is at stride ``2**N`` with ``base * 2**N`` channels."""

    def __init__(self, in_channels: int = 3, base_channels: int = 64, depth: int = 4) -> None:
        super().__init__()
        self.name = "unet_encoder"
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.stem = DoubleConv(in_channels, widths[0])
        self.downs = nn.ModuleList(DoubleConv(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.pool = nn.MaxPool2d(2)
        self.channels = {f"c{i}": w for i, w in enumerate(widths)}
        self.strides = {f"c{i}": 2**i for i in range(depth + 1)}
        self.output_stride = 2**depth
        self.final_level = f"c{depth}"
        self.aux_level = f"c{depth - 1}"

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = OrderedDict()
        x = out["c0"] = self.stem(x)
        for i, down in enumerate(self.downs, start=1):
            x = out[f"c{i}"] = down(self.pool(x))
        return out


class UNet(SegmentationModel):
    """Classic U-Net; ``base_channels=64`` is the paper's width, 16 makes a fast CPU model."""

    full_resolution_logits = True

    def __init__(
        self, num_classes: int, *, base_channels: int = 64, depth: int = 4, in_channels: int = 3, aux: bool = False
    ) -> None:
        encoder = UNetEncoder(in_channels, base_channels, depth)
        super().__init__(encoder, num_classes, feature_channels=base_channels, aux=aux,
                         size_divisor=encoder.output_stride)
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.ups = nn.ModuleList(nn.ConvTranspose2d(w, w // 2, 2, stride=2) for w in reversed(widths[1:]))
        self.blocks = nn.ModuleList(DoubleConv(w, w // 2) for w in reversed(widths[1:]))
        self.classifier = nn.Conv2d(base_channels, num_classes, 1)
        self.depth = depth

    def decode(self, features: dict[str, Tensor], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        x = features[f"c{self.depth}"]
        for i, (up, block) in enumerate(zip(self.ups, self.blocks)):
            x = block(torch.cat([features[f"c{self.depth - 1 - i}"], up(x)], dim=1))
        return x, self.classifier(x)


class _DecoderBlock(nn.Module):
    """Nearest upsampling to the skip's size, concatenation, two 3x3 conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = DoubleConv(in_channels + skip_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor | None, size: tuple[int, int]) -> Tensor:
        x = F.interpolate(x, size=size, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return cast(Tensor, self.conv(x))


class UNetResNet(SegmentationModel):
    """U-Net decoder on a ResNet (or MobileNetV3) encoder of output stride 32.

    Five decoder blocks go from stride 32 to 1 with ``decoder_channels`` each, taking skips from
    c4, c3, c2 and c1 (as segmentation_models_pytorch's Unet does).
    """

    full_resolution_logits = True

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        aux: bool = False,
    ) -> None:
        if len(decoder_channels) != 5:
            raise ConfigError(f"decoder_channels needs 5 entries, got {list(decoder_channels)}")
        super().__init__(backbone, num_classes, feature_channels=decoder_channels[-1], aux=aux)
        skips = ["c4", "c3", "c2", "c1", None]
        ins = [backbone.channels["c5"], *decoder_channels[:-1]]
        self.skips = skips
        self.blocks = nn.ModuleList(
            _DecoderBlock(i, backbone.channels[s] if s else 0, o) for i, s, o in zip(ins, skips, decoder_channels)
        )
        self.classifier = nn.Conv2d(decoder_channels[-1], num_classes, 1)

    def decode(self, features: dict[str, Tensor], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        x = features["c5"]
        for name, block in zip(self.skips, self.blocks):
            skip = features[name] if name is not None else None
            x = block(x, skip, size if skip is None else (skip.shape[-2], skip.shape[-1]))
        return x, self.classifier(x)
