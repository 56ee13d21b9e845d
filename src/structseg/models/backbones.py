"""Encoders built from torchvision classification networks.

Every backbone returns an ordered dict ``level -> feature map``. Level ``"cN"`` is the deepest
feature of the network's N-th stage, nominally at stride ``2**N``; when strides are replaced by
dilation (``output_stride`` 16 or 8) the deep levels keep their names but ``strides`` says where
they really are. VGG and AlexNet also have ``"fc7"``: their fully connected layers recast as
convolutions, as in FCN. Parameter names equal those of the torchvision classification model, so
its state dict loads directly (see :mod:`structseg.models.weights`).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torchvision.models as tvm
from torch import Tensor, nn

from structseg.errors import ConfigError
from structseg.models.weights import ImageNetWeights, torchvision_weights

__all__ = [
    "Backbone",
    "ResNetBackbone",
    "VGGBackbone",
    "AlexNetBackbone",
    "MobileNetV3Backbone",
    "MobileNetV2Backbone",
    "EfficientNetLiteBackbone",
    "build_backbone",
    "list_backbones",
    "backbone_output_strides",
    "backbone_imagenet_weights",
]


class Backbone(nn.Module):
    """Base of all encoders: ``forward(x) -> OrderedDict[level, Tensor]``.

    Attributes:
        channels: channel count of each level, in forward order.
        strides: true stride of each level for an input whose sides are multiples of 32.
        output_stride: stride of ``final_level``.
        final_level: the level a plain classifier head uses.
        aux_level: the level an auxiliary head uses (the stage before the last, as in torchvision).
        ignored_keys: key prefixes of the torchvision classification state dict that the backbone drops
            (the ImageNet classifier).
    """

    name: str = ""
    channels: dict[str, int]
    strides: dict[str, int]
    output_stride: int
    final_level: str = "c5"
    aux_level: str = "c4"
    ignored_keys: tuple[str, ...] = ()

    @classmethod
    def imagenet_weights_for(cls, name: str) -> ImageNetWeights:
        """The ImageNet weights of backbone ``name`` (file, source, normalization), without building it."""
        raise NotImplementedError

    def imagenet_weights(self) -> ImageNetWeights:
        """The ImageNet weights of this backbone."""
        return self.imagenet_weights_for(self.name)

    def convert_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Map a torchvision classification state dict onto this backbone's keys."""
        return {k: v for k, v in state.items() if not k.startswith(self.ignored_keys)}


# ----------------------------------------------------------------------------------------- ResNet

_RESNETS: dict[str, tuple[Callable[..., tvm.ResNet], str]] = {
    "resnet18": (tvm.resnet18, "ResNet18_Weights"),
    "resnet34": (tvm.resnet34, "ResNet34_Weights"),
    "resnet50": (tvm.resnet50, "ResNet50_Weights"),
    "resnet101": (tvm.resnet101, "ResNet101_Weights"),
}
_DILATE = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}


def _set_conv(conv: nn.Conv2d, stride: int, dilation: int) -> None:
    conv.stride = (stride, stride)
    conv.dilation = (dilation, dilation)
    pad = dilation * (conv.kernel_size[0] // 2)
    conv.padding = (pad, pad)


def _dilate_basic_blocks(net: tvm.ResNet, dilate: list[bool]) -> None:
    """Replace strides by dilation in BasicBlock stages, mirroring torchvision's Bottleneck rule.

    torchvision refuses ``replace_stride_with_dilation`` for ResNet-18/34; the first block of a
    dilated stage keeps the previous dilation on its (formerly strided) first conv.
    """
    dilation = 1
    for layer, flag in zip((net.layer2, net.layer3, net.layer4), dilate):
        if not flag:
            continue
        previous, dilation = dilation, dilation * 2
        for i, block in enumerate(layer):
            _set_conv(block.conv1, 1, previous if i == 0 else dilation)
            _set_conv(block.conv2, 1, dilation)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)


class ResNetBackbone(Backbone):
    """ResNet-18/34/50/101 with output stride 32, 16 or 8; levels c1 (stem) .. c5 (layer4)."""

    ignored_keys = ("fc.",)

    def __init__(self, name: str = "resnet50", output_stride: int = 32) -> None:
        super().__init__()
        ctor = _RESNETS[name][0]
        self.name = name
        dilate = _DILATE[output_stride]
        bottleneck = name in ("resnet50", "resnet101")
        net = ctor(weights=None, replace_stride_with_dilation=dilate if bottleneck else None)
        if not bottleneck:
            _dilate_basic_blocks(net, dilate)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        e = 4 if bottleneck else 1
        self.channels = {"c1": 64, "c2": 64 * e, "c3": 128 * e, "c4": 256 * e, "c5": 512 * e}
        self.strides = {"c1": 2, "c2": 4, "c3": 8, "c4": min(16, output_stride), "c5": output_stride}
        self.output_stride = output_stride

    @classmethod
    def imagenet_weights_for(cls, name: str) -> ImageNetWeights:
        return torchvision_weights(name, getattr(tvm, _RESNETS[name][1]).DEFAULT)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = OrderedDict()
        x = out["c1"] = self.relu(self.bn1(self.conv1(x)))
        x = out["c2"] = self.layer1(self.maxpool(x))
        x = out["c3"] = self.layer2(x)
        x = out["c4"] = self.layer3(x)
        out["c5"] = self.layer4(x)
        return out


# ------------------------------------------------------------------------------- VGG and AlexNet


class _ConvClassifierMixin:
    """FCN's trick: the classifier's fully connected fc6/fc7 become convolutions."""

    _fc_map: dict[str, tuple[str, tuple[int, ...]]]  # torchvision key prefix -> (our prefix, kernel shape)
    ignored_keys: tuple[str, ...]

    def convert_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for key, value in state.items():
            if key.startswith(self.ignored_keys):
                continue
            prefix, _, leaf = key.rpartition(".")
            if prefix in self._fc_map:
                target, kernel = self._fc_map[prefix]
                key = f"{target}.{leaf}"
                if leaf == "weight" and value.dim() == 2:
                    value = value.reshape(value.shape[0], *kernel)
            out[key] = value
        return out


def _kaiming_init(module: nn.Module) -> None:
    """torchvision's VGG initialisation (He, fan-out), used for VGG, AlexNet and the convolutional fc6/fc7."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _fc_block(in_channels: int, fc_channels: int, kernel: int, pad: nn.Module | None = None) -> nn.Sequential:
    layers: list[nn.Module] = [pad] if pad is not None else []
    padding = 0 if pad is not None else kernel // 2
    layers += [nn.Conv2d(in_channels, fc_channels, kernel, padding=padding), nn.ReLU(inplace=True), nn.Dropout(0.5)]
    return nn.Sequential(*layers)


class VGGBackbone(_ConvClassifierMixin, Backbone):
    """VGG-16 (optionally with BatchNorm); levels c1..c5 are pool1..pool5, ``fc7`` the convolutional fc7.

    ``fc_channels`` (4096 in the original) can be reduced for small models; ImageNet weights then
    only fit when ``include_fc=False``.
    """

    ignored_keys = ("classifier.6.",)

    def __init__(self, name: str = "vgg16", *, include_fc: bool = True, fc_channels: int = 4096) -> None:
        super().__init__()
        self.name = name
        # torchvision's own layer list, without building (and initialising) the 120M-parameter classifier
        self.features = tvm.vgg.make_layers(tvm.vgg.cfgs["D"], batch_norm=name == "vgg16_bn")
        self._ends = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        self.channels = {"c1": 64, "c2": 128, "c3": 256, "c4": 512, "c5": 512}
        self.strides = {"c1": 2, "c2": 4, "c3": 8, "c4": 16, "c5": 32}
        self.include_fc = include_fc
        if include_fc:
            self.fc6 = _fc_block(512, fc_channels, 7)
            self.fc7 = _fc_block(fc_channels, fc_channels, 1)
            self.channels["fc7"], self.strides["fc7"] = fc_channels, 32
            self.final_level = "fc7"
        else:
            self.ignored_keys = ("classifier.",)
        self._fc_map = {"classifier.0": ("fc6.0", (512, 7, 7)), "classifier.3": ("fc7.0", (fc_channels, 1, 1))}
        self.output_stride = 32
        _kaiming_init(self)

    @classmethod
    def imagenet_weights_for(cls, name: str) -> ImageNetWeights:
        return torchvision_weights(name,
                                   (tvm.VGG16_BN_Weights if name == "vgg16_bn" else tvm.VGG16_Weights).IMAGENET1K_V1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = OrderedDict()
        level = 1
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._ends:
                out[f"c{level}"] = x
                level += 1
        if self.include_fc:
            out["fc7"] = self.fc7(self.fc6(x))
        return out


class AlexNetBackbone(_ConvClassifierMixin, Backbone):
    """AlexNet as in FCN-AlexNet; levels c2 (conv1), c3..c5 (pool1..pool3) and ``fc7``.

    Same layers and parameter names as torchvision's ``alexnet().features``, but conv1 and the pools
    are padded (5 and 1 instead of 2 and 0) so that an input divisible by 32 gives exact strides
    4/8/16/32, which the FCN skip fusion needs.
    """

    ignored_keys = ("classifier.6.",)

    def __init__(self, name: str = "alexnet", *, include_fc: bool = True, fc_channels: int = 4096) -> None:
        super().__init__()
        self.name = name
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=5), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, padding=1),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, padding=1),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, padding=1),
        )
        self._ends = {1: "c2", 2: "c3", 5: "c4", 12: "c5"}
        self.channels = {"c2": 64, "c3": 64, "c4": 192, "c5": 256}
        self.strides = {"c2": 4, "c3": 8, "c4": 16, "c5": 32}
        self.include_fc = include_fc
        if include_fc:
            self.fc6 = _fc_block(256, fc_channels, 6, pad=nn.ZeroPad2d((2, 3, 2, 3)))
            self.fc7 = _fc_block(fc_channels, fc_channels, 1)
            self.channels["fc7"], self.strides["fc7"] = fc_channels, 32
            self.final_level = "fc7"
        else:
            self.ignored_keys = ("classifier.",)
        self._fc_map = {"classifier.1": ("fc6.1", (256, 6, 6)), "classifier.4": ("fc7.0", (fc_channels, 1, 1))}
        self.output_stride = 32
        _kaiming_init(self)  # torchvision's default init shrinks activations layer by layer: bad from scratch

    @classmethod
    def imagenet_weights_for(cls, name: str) -> ImageNetWeights:
        return torchvision_weights(name, tvm.AlexNet_Weights.IMAGENET1K_V1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = OrderedDict()
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._ends:
                out[self._ends[i]] = x
        if self.include_fc:
            out["fc7"] = self.fc7(self.fc6(x))
        return out


# -------------------------------------------------------------------------------------- factory

# MobileNets and EfficientNet-Lite live in modules of their own, which subclass Backbone from this one: imported
# here, after every name they need is defined (the package __init__ always imports this module first).
from structseg.models.efficientnet import EfficientNetLiteBackbone  # noqa: E402
from structseg.models.mobilenet import MobileNetV2Backbone, MobileNetV3Backbone  # noqa: E402

_BACKBONES: dict[str, tuple[type[Backbone], tuple[int, ...]]] = {
    "resnet18": (ResNetBackbone, (32, 16, 8)),
    "resnet34": (ResNetBackbone, (32, 16, 8)),
    "resnet50": (ResNetBackbone, (32, 16, 8)),
    "resnet101": (ResNetBackbone, (32, 16, 8)),
    "mobilenet_v3_large": (MobileNetV3Backbone, (32, 16)),
    "mobilenet_v2": (MobileNetV2Backbone, (32, 16, 8)),
    "efficientnet_lite0": (EfficientNetLiteBackbone, (32, 16, 8)),
    "efficientnet_lite1": (EfficientNetLiteBackbone, (32, 16, 8)),
    "efficientnet_lite2": (EfficientNetLiteBackbone, (32, 16, 8)),
    "vgg16": (VGGBackbone, (32,)),
    "vgg16_bn": (VGGBackbone, (32,)),
    "alexnet": (AlexNetBackbone, (32,)),
}


def list_backbones() -> list[str]:
    """Names accepted by :func:`build_backbone`."""
    return list(_BACKBONES)


def backbone_output_strides(name: str) -> tuple[int, ...]:
    """Output strides a backbone supports."""
    if name not in _BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; valid backbones: {', '.join(_BACKBONES)}")
    return _BACKBONES[name][1]


def backbone_imagenet_weights(name: str) -> ImageNetWeights:
    """The ImageNet weights (file, source, licence, normalization, accuracy) of backbone ``name``."""
    backbone_output_strides(name)  # validates the name
    return _BACKBONES[name][0].imagenet_weights_for(name)


def build_backbone(
    name: str, *, output_stride: int = 32, weights: str | None = None, **options: object
) -> Backbone:
    """Build a backbone by name; ``weights`` is None (random), ``"imagenet"`` or a local file path."""
    strides = backbone_output_strides(name)
    if output_stride not in strides:
        raise ConfigError(
            f"backbone {name!r} does not support output_stride={output_stride!r}; valid: {', '.join(map(str, strides))}"
        )
    cls = _BACKBONES[name][0]
    backbone: Backbone
    if cls in (VGGBackbone, AlexNetBackbone):
        backbone = cls(name, **options)  # type: ignore[arg-type]
    elif options:
        raise ConfigError(f"backbone {name!r} takes no option(s) {', '.join(sorted(options))}")
    else:
        backbone = cls(name, output_stride=output_stride)
    if weights is not None:
        from structseg.models.weights import load_backbone_weights

        load_backbone_weights(backbone, weights)
    return backbone

