"""UperNet (Xiao et al. 2018, "Unified Perceptual Parsing for Scene Understanding").

A pyramid pooling module (PPM, as in PSPNet: average pooling to 1x1, 2x2, 3x3 and 6x6 bins, a 1x1
conv per bin, upsampled back and concatenated with its input, then a 3x3 conv) replaces the
lateral of the top backbone level of a feature pyramid network (FPN): 1x1 laterals on the other
levels, a top-down path that upsamples each level to the size of the next finer lateral and adds,
and 3x3 output convs. All pyramid levels are then upsampled to the finest one, concatenated, fused
by a 3x3 conv-BN-ReLU and classified by a 1x1 conv (mmsegmentation's ``UPerHead`` layout, also that
of segmentation_models_pytorch's ``UPerNet`` without its LayerNorms).

Every upsampling goes to the size of its target map, never by a fixed factor: with a dilated backbone
(output stride 16 or 8) several levels share a stride, and odd input sizes round each stride differently.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structseg.errors import ConfigError
from structseg.models.backbones import Backbone
from structseg.models.base import SegmentationModel
from structseg.models.deeplab import _conv_bn_relu, _PooledBatchNorm

__all__ = ["PyramidPoolingBranch", "PyramidPooling", "FPN", "UperNetHead", "UperNet", "default_levels"]


def _adaptive_avg_pool(x: Tensor, size: int) -> Tensor:
    """``F.adaptive_avg_pool2d(x, size)`` made of ops that keep the input size symbolic when exported.

    PyTorch's bins along a side of length L are ``[floor(i L / s), ceil((i + 1) L / s))``; each bin's mean is
    a difference of cumulative sums divided by its width. The ONNX exporter fixes the kernel of a real
    adaptive pooling to the example input's size, which would be wrong for every other input size.
    """
    dtype = x.dtype  # cumulative sums in bf16 would lose the bins' means: at least fp32
    x = x.to(torch.promote_types(dtype, torch.float32))
    for dim in (2, 3):
        length = x.shape[dim]
        i = torch.arange(size, device=x.device)
        start = torch.div(i * length, size, rounding_mode="floor")
        end = torch.div((i + 1) * length + size - 1, size, rounding_mode="floor")
        csum = F.pad(x.cumsum(dim), (0, 0, 1, 0) if dim == 2 else (1, 0))
        shape = [1, 1, size, 1] if dim == 2 else [1, 1, 1, size]
        width = (end - start).to(x.dtype).reshape(shape)
        x = (csum.index_select(dim, end) - csum.index_select(dim, start)) / width
    return x.to(dtype)


class PyramidPoolingBranch(nn.Sequential):
    """One PPM bin: average pooling to ``scale`` x ``scale``, 1x1 conv-BN-ReLU, bilinear upsampling back.

    The 1x1 bin's BatchNorm falls back to its running statistics for a training batch of one image
    (one value per channel), as DeepLab's image-pooling branch does.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            _PooledBatchNorm(out_channels),
            nn.ReLU(inplace=True),
        )
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if self.scale == 1:
            y = x.mean((2, 3), keepdim=True)
        else:
            y = _adaptive_avg_pool(x, self.scale)
        for module in self:
            y = module(y)
        if self.scale == 1:
            return y.expand(-1, -1, h, w)  # bilinear upsampling of a 1x1 map is a broadcast
        return F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: the input and one :class:`PyramidPoolingBranch` per scale, concatenated,
    then a 3x3 conv-BN-ReLU to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, pool_scales: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(PyramidPoolingBranch(in_channels, out_channels, s) for s in pool_scales)
        self.bottleneck = nn.Sequential(
            *_conv_bn_relu(in_channels + len(self.branches) * out_channels, out_channels, 3))

    def forward(self, x: Tensor) -> Tensor:
        return cast(Tensor, self.bottleneck(torch.cat([x, *(branch(x) for branch in self.branches)], dim=1)))


class FPN(nn.Module):
    """The top-down path of a feature pyramid network over the levels below the top one.

    ``forward(features, top)`` takes the lower levels fine to coarse and the already projected top map
    (the PPM output); it returns every level at ``out_channels``, fine to coarse, the top one unchanged.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(nn.Sequential(*_conv_bn_relu(c, out_channels)) for c in in_channels)
        self.outputs = nn.ModuleList(
            nn.Sequential(*_conv_bn_relu(out_channels, out_channels, 3)) for _ in in_channels)

    def forward(self, features: Sequence[Tensor], top: Tensor) -> list[Tensor]:
        maps = [lateral(f) for lateral, f in zip(self.laterals, features)] + [top]
        for i in range(len(maps) - 2, -1, -1):
            size = (maps[i].shape[-2], maps[i].shape[-1])
            maps[i] = maps[i] + F.interpolate(maps[i + 1], size=size, mode="bilinear", align_corners=False)
        return [conv(m) for conv, m in zip(self.outputs, maps[:-1])] + [maps[-1]]


class UperNetHead(nn.Module):
    """PPM on the last of ``in_channels``' levels, :class:`FPN` over the others, fusion at the finest level.

    ``features(maps)`` is the fused map (``channels`` wide, at the finest level's size); ``forward`` adds
    dropout and the 1x1 classifier.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, *, channels: int = 128,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1) -> None:
        super().__init__()
        self.ppm = PyramidPooling(in_channels[-1], channels, pool_scales)
        self.fpn = FPN(in_channels[:-1], channels)
        self.fuse = nn.Sequential(*_conv_bn_relu(len(in_channels) * channels, channels, 3))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def features(self, maps: Sequence[Tensor]) -> Tensor:
        pyramid = self.fpn(maps[:-1], self.ppm(maps[-1]))
        size = (pyramid[0].shape[-2], pyramid[0].shape[-1])
        resized = [pyramid[0]] + [F.interpolate(p, size=size, mode="bilinear", align_corners=False)
                                  for p in pyramid[1:]]
        return cast(Tensor, self.fuse(torch.cat(resized, dim=1)))

    def classify(self, x: Tensor) -> Tensor:
        return cast(Tensor, self.classifier(self.dropout(x)))

    def forward(self, maps: Sequence[Tensor]) -> Tensor:
        return self.classify(self.features(maps))


def default_levels(backbone: Backbone) -> tuple[str, ...]:
    """The levels from stride 4 up to the final level (c2..c5 on ResNets and MobileNets), else all levels."""
    names = list(backbone.channels)
    last = names.index(backbone.final_level) if backbone.final_level in names else len(names) - 1
    chosen = tuple(n for n in names[: last + 1] if backbone.strides.get(n, 0) >= 4)
    return chosen or tuple(names)


def _resolve_levels(backbone: Backbone, levels: Sequence[str] | None) -> tuple[str, ...]:
    if levels is None:
        return default_levels(backbone)
    if isinstance(levels, str) or not levels:
        raise ConfigError(f"upernet: levels must be a non-empty list of backbone levels, got {levels!r}")
    names = list(backbone.channels)
    for level in levels:
        if level not in names:
            raise ConfigError(
                f"upernet: backbone {backbone.name!r} has no level {level!r}; valid levels: {', '.join(names)}")
    if len(set(levels)) != len(levels):
        raise ConfigError(f"upernet: levels {list(levels)} name a level twice")
    return tuple(sorted(levels, key=names.index))  # fine to coarse: the PPM takes the deepest


class UperNet(SegmentationModel):
    """UperNet: :class:`UperNetHead` on several backbone levels; logits at the finest level, upsampled.

    Args:
        channels: width of the PPM, FPN and fusion convs. The paper uses 512; the default 128 keeps
            training affordable on small CPUs (at 512 the head outweighs a ResNet-18).
        pool_scales: PPM bin sizes (PSPNet's 1, 2, 3, 6).
        levels: backbone levels of the pyramid, in any order (sorted fine to coarse; the PPM takes the
            deepest). None: :func:`default_levels`, c2..c5 (strides 4..32 at output stride 32).
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        channels: int = 128,
        pool_scales: tuple[int, ...] = (1, 2, 3, 6),
        levels: tuple[str, ...] | None = None,
        aux: bool = False,
    ) -> None:
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise ConfigError(f"upernet: channels must be a positive integer, got {channels!r}")
        scales = tuple(pool_scales)
        if not scales or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in scales):
            raise ConfigError(
                f"upernet: pool_scales must be a non-empty list of positive integers, got {pool_scales!r}")
        super().__init__(backbone, num_classes, feature_channels=channels, aux=aux)
        self.levels = _resolve_levels(backbone, levels)
        self.pool_scales = scales
        self.classifier = UperNetHead([backbone.channels[n] for n in self.levels], num_classes,
                                      channels=channels, pool_scales=scales)

    def decode(self, features: dict[str, Tensor], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        x = self.classifier.features([features[n] for n in self.levels])
        return x, self.classifier.classify(x)
