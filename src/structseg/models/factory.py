"""The model registry and :func:`build_model`, the one way to build a model from a name."""
from __future__ import annotations

import collections.abc
import inspect
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass

from structseg.errors import ConfigError
from structseg.models.backbones import Backbone, backbone_output_strides, build_backbone
from structseg.models.base import SegmentationModel
from structseg.models.deeplab import DeepLabV3, DeepLabV3Plus
from structseg.models.fcn import FCN, FCNSkip
from structseg.models.ops import guard_bf16_conv_defect
from structseg.models.unet import UNet, UNetResNet
from structseg.models.upernet import UperNet

__all__ = ["ModelSpec", "build_model", "list_models", "model_spec", "register_model"]

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
BACKBONE_OPTIONS = {"fc_channels"}  # passed to the backbone, not the head


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registered model.

    ``output_strides`` are those the head supports (intersected with the backbone's);
    ``default_output_stride`` is used when it is valid for the chosen backbone, else the nearest valid one.
    """

    name: str
    build: Callable[..., SegmentationModel]
    description: str
    backbones: tuple[str, ...] = ()
    default_backbone: str | None = None
    output_strides: tuple[int, ...] = (32,)
    default_output_stride: int = 32
    options: tuple[str, ...] = ()


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a model to the registry (names must be new)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return list(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    """The registry entry of ``name``; :class:`ConfigError` listing the valid names if unknown."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def _options(fn: Callable[..., object], skip: int) -> tuple[str, ...]:
    params = list(inspect.signature(fn).parameters.values())[skip:]
    return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name != "aux")


_BACKBONE_OPTION_TYPES: dict[str, object] = {"fc_channels": int}


def _matches(value: object, tp: object) -> bool:
    """Whether a (YAML-sourced) value fits a simple annotation: scalars, unions, sequences of them."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (tuple, list, collections.abc.Sequence):
        if not isinstance(value, (tuple, list)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
        return not args or all(_matches(v, args[0]) for v in value)
    return True  # anything richer is left to the builder


def _type_name(tp: object) -> str:
    return str(tp).replace("typing.", "").replace("collections.abc.", "").replace("<class '", "").replace("'>", "")


def _check_option_types(name: str, spec: ModelSpec, options: dict[str, object]) -> None:
    target = spec.build.__init__ if isinstance(spec.build, type) else spec.build  # type: ignore[misc]
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: leave the check to the builder
        hints = {}
    hints = {**hints, **_BACKBONE_OPTION_TYPES}
    for key, value in options.items():
        if key in hints and not _matches(value, hints[key]):
            raise ConfigError(f"model {name!r}: option {key}={value!r} must be {_type_name(hints[key])}")


def build_model(
    name: str,
    num_classes: int,
    *,
    backbone: str | None = None,
    output_stride: int | None = None,
    weights: str | os.PathLike[str] | None = None,
    aux: bool = False,
    **options: object,
) -> SegmentationModel:
    """Build a registered segmentation model.

    Args:
        name: one of :func:`list_models`.
        num_classes: number of output channels K.
        backbone: encoder name; None picks the model's default (``model_spec(name).default_backbone``).
        output_stride: 32, 16 or 8 where the model and backbone allow it; None picks the model's default.
        weights: backbone initialisation. None (the default) is random initialisation; ``"imagenet"`` takes
            torchvision's ImageNet weights (from the torch hub cache, or downloaded once; offline this raises
            :class:`~structseg.errors.WeightsUnavailableError`); a path to a ``.pth``/``.safetensors`` file
            loads a state dict with the keys of the torchvision classification model.
        aux: add an auxiliary FCN head whose logits are returned as ``"aux"`` in training mode.
        options: model-specific keywords (``base_channels``, ``decoder_channels``, ``atrous_rates``,
            ``separable``, ``learnable_upsample``, ``fc_channels``, ``pad_mode``, UperNet's ``channels``,
            ``pool_scales`` and ``levels``...).

    Fast CPU configurations: ``build_model("deeplabv3plus", K, backbone="mobilenet_v3_large")``,
    ``build_model("deeplabv3plus", K, backbone="resnet18")``, ``build_model("unet", K, base_channels=16)``.
    """
    spec = model_spec(name)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    requested = dict(options)
    pad_mode = options.pop("pad_mode", None)
    if pad_mode is not None and pad_mode not in ("reflect", "replicate", "constant"):
        raise ConfigError(f"pad_mode must be 'reflect', 'replicate' or 'constant', got {pad_mode!r}")
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ConfigError(
            f"model {name!r} got unknown option(s) {', '.join(unknown)}; valid options: "
            f"{', '.join(spec.options + ('pad_mode',)) or 'none'}"
        )
    _check_option_types(name, spec, options)
    if not spec.backbones:
        if backbone is not None or weights is not None:
            raise ConfigError(
                f"model {name!r} has its own encoder: backbone and weights must be None "
                f"(use 'unet_resnet' for a U-Net on a pretrained ResNet)"
            )
        if output_stride not in (None, spec.default_output_stride):
            raise ConfigError(f"model {name!r} supports output_stride {spec.default_output_stride} only")
        model = spec.build(num_classes, aux=aux, **options)
    else:
        backbone = backbone or spec.default_backbone
        if backbone not in spec.backbones:
            raise ConfigError(
                f"model {name!r} does not take backbone {backbone!r}; valid backbones: {', '.join(spec.backbones)}"
            )
        valid = [s for s in spec.output_strides if s in backbone_output_strides(backbone)]
        if output_stride is None:
            output_stride = min(valid, key=lambda s: abs(s - spec.default_output_stride))
        if output_stride not in valid:
            raise ConfigError(
                f"model {name!r} with backbone {backbone!r} does not support output_stride={output_stride!r}; "
                f"valid: {', '.join(map(str, valid))}"
            )
        bb_options = {k: options.pop(k) for k in BACKBONE_OPTIONS & set(options)}
        encoder = build_backbone(backbone, output_stride=output_stride,
                                 weights=None if weights is None else os.fspath(weights), **bb_options)
        model = spec.build(encoder, num_classes, aux=aux, **options)
    if pad_mode is not None:
        model.pad_mode = str(pad_mode)
    model.build_args = {"name": name, "backbone": backbone, "output_stride": output_stride, "aux": aux,
                        "options": requested}
    guard_bf16_conv_defect(model)
    return model


def _fcn_skip(stride: int) -> Callable[..., SegmentationModel]:
    def build(backbone: Backbone, num_classes: int, *, aux: bool = False,
              learnable_upsample: bool | None = None) -> SegmentationModel:
        return FCNSkip(backbone, num_classes, stride=stride, aux=aux, learnable_upsample=learnable_upsample)

    return build


EFFICIENTNETS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
MOBILENETS = ("mobilenet_v3_large", "mobilenet_v2", *EFFICIENTNETS)  # mobile encoders, EfficientNet-Lite included
_FCN_BACKBONES = ("vgg16", "vgg16_bn", "alexnet", *RESNETS, *MOBILENETS)
for _stride in (32, 16, 8):
    register_model(ModelSpec(
        f"fcn{_stride}s", _fcn_skip(_stride),
        f"FCN-{_stride}s: score layers fused through bilinear-initialised transposed convolutions",
        backbones=_FCN_BACKBONES, default_backbone="vgg16",
        options=("learnable_upsample", "fc_channels"),
    ))
register_model(ModelSpec(
    "fcn", FCN, "FCNHead on a dilated backbone (torchvision's fcn_resnet50 layout)",
    backbones=(*RESNETS, *MOBILENETS), default_backbone="resnet50",
    output_strides=(32, 16, 8), default_output_stride=8,
))
register_model(ModelSpec(
    "unet", UNet, "classic U-Net with its own encoder (base_channels=16 for a fast CPU model)",
    default_output_stride=16, options=_options(UNet.__init__, 2),
))
register_model(ModelSpec(
    "unet_resnet", UNetResNet, "U-Net decoder with concatenated skips on a ResNet/MobileNetV3 encoder",
    backbones=(*RESNETS, *MOBILENETS), default_backbone="resnet34",
    options=_options(UNetResNet.__init__, 3),
))
register_model(ModelSpec(
    "deeplabv3", DeepLabV3, "DeepLabV3: ASPP head (torchvision's deeplabv3 layout)",
    backbones=(*RESNETS, *MOBILENETS), default_backbone="resnet50",
    output_strides=(16, 8), default_output_stride=16, options=_options(DeepLabV3.__init__, 3),
))
register_model(ModelSpec(
    "deeplabv3plus", DeepLabV3Plus, "DeepLabV3+: ASPP plus a decoder on stride-4 features",
    backbones=(*RESNETS, *MOBILENETS), default_backbone="resnet50",
    output_strides=(16, 8), default_output_stride=16, options=_options(DeepLabV3Plus.__init__, 3),
))
register_model(ModelSpec(
    "upernet", UperNet, "UperNet: pyramid pooling on the top level + FPN over all levels, fused",
    backbones=(*RESNETS, *MOBILENETS), default_backbone="resnet50",
    output_strides=(32, 16, 8), default_output_stride=32, options=_options(UperNet.__init__, 3),
))
