"""Mask R-CNN builders: torchvision's ResNet-50 FPN and lighter FPN backbones for the CPU.

``num_classes`` counts the semantic classes; the network gets ``num_classes + 1``
outputs, label 0 being background (see :mod:`structseg.instance.targets`).
Built from scratch (the default), the backbone uses trainable BatchNorm as torchvision
does for ``weights_backbone=None``; with pretrained weights it uses frozen BatchNorm.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from structseg.errors import CheckpointError, ConfigError, WeightsUnavailableError

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
MOBILENETS = ("mobilenet_v3_large", "mobilenet_v3_small")


def list_backbones() -> list[str]:
    """Backbone names accepted by :func:`build_maskrcnn`."""
    return [*RESNETS, *MOBILENETS]


def _imagenet_weights(name: str) -> Any:
    from torchvision.models import get_model_weights

    return get_model_weights(name).DEFAULT


def _load_state(module: nn.Module, path: str | Path, what: str) -> None:
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"{what} weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same fault for the user
        raise CheckpointError(f"{path}: cannot read {what} weights ({exc})") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: does not match the {what} ({str(exc).splitlines()[0]})") from exc


def _anchors(sizes: Sequence[int] | None, levels: int) -> Any:
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    if sizes is None:
        sizes = (32, 64, 128, 256, 512)
    sizes = tuple(int(s) for s in sizes)
    per_level = tuple((s,) for s in sizes) if len(sizes) == levels else (sizes,) * levels
    return AnchorGenerator(per_level, ((0.5, 1.0, 2.0),) * levels)


def build_maskrcnn(
    num_classes: int,
    *,
    backbone: str = "resnet50",
    weights_backbone: str | None = None,
    trainable_layers: int | None = None,
    anchor_sizes: Sequence[int] | None = None,
    box_head_dim: int = 1024,
    mask_head_layers: Sequence[int] = (256, 256, 256, 256),
    min_size: int = 800,
    max_size: int = 1333,
    **kwargs: Any,
) -> nn.Module:
    """A torchvision ``MaskRCNN`` with ``num_classes + 1`` outputs.

    ``backbone`` is one of :func:`list_backbones`; ``"resnet50"`` with default anchors
    is exactly ``maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)``.
    ``weights_backbone``: None (random) or ``"imagenet"`` (torchvision's weights, from
    torch's cache or downloaded). ``anchor_sizes``: one size per FPN level,
    or sizes shared by every level. ``box_head_dim`` (width of the two-layer box head)
    and ``mask_head_layers`` (channels of the mask head's convolutions) shrink the
    RoI heads for the CPU; the defaults are torchvision's. Other keywords go to ``MaskRCNN``
    (e.g. ``box_detections_per_img``).
    """
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
    from torchvision.ops.misc import FrozenBatchNorm2d

    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive int, got {num_classes!r}")
    if backbone not in list_backbones():
        raise ConfigError(f"unknown Mask R-CNN backbone {backbone!r}; choose from {', '.join(list_backbones())}")
    if weights_backbone not in (None, "imagenet"):
        raise ConfigError(f"weights_backbone must be null or 'imagenet', got {weights_backbone!r}")

    enum = _imagenet_weights(backbone) if weights_backbone == "imagenet" else None
    pretrained = enum is not None
    norm_layer = FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    if backbone in RESNETS:
        layers = 3 if trainable_layers is None and pretrained else (5 if trainable_layers is None else trainable_layers)
        build = lambda w: resnet_fpn_backbone(  # noqa: E731
            backbone_name=backbone, weights=w, norm_layer=norm_layer, trainable_layers=layers
        )
        levels = 5
    else:
        layers = 3 if trainable_layers is None and pretrained else (6 if trainable_layers is None else trainable_layers)
        build = lambda w: mobilenet_backbone(  # noqa: E731
            backbone_name=backbone, weights=w, fpn=True, norm_layer=norm_layer, trainable_layers=layers
        )
        levels = 3
    try:
        body = build(enum)
    except (OSError, RuntimeError) as exc:
        if enum is None:
            raise
        raise WeightsUnavailableError(
            f"cannot fetch ImageNet weights for {backbone} ({exc}); put them in torch's cache "
            f"({torch.hub.get_dir()}/checkpoints) or train from scratch (weights_backbone: null)"
        ) from exc
    if anchor_sizes is not None or backbone not in RESNETS:
        kwargs.setdefault("rpn_anchor_generator", _anchors(anchor_sizes, levels))
    heads = _light_heads(body.out_channels, num_classes + 1, box_head_dim, tuple(mask_head_layers))
    outputs = None if heads else num_classes + 1
    return MaskRCNN(body, num_classes=outputs, min_size=min_size, max_size=max_size, **heads, **kwargs)


def _light_heads(channels: int, outputs: int, box_dim: int, mask_layers: tuple[int, ...]) -> dict[str, nn.Module]:
    """All four RoI heads when any is narrower than torchvision's default, else none (torchvision builds them)."""
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    if box_dim == 1024 and mask_layers == (256, 256, 256, 256):
        return {}
    if box_dim < 1 or not mask_layers or min(mask_layers) < 1:
        raise ConfigError(f"box_head_dim {box_dim} and mask_head_layers {list(mask_layers)} "
                          "must be positive and non-empty")
    return {
        "box_head": TwoMLPHead(channels * 7 * 7, box_dim),
        "box_predictor": FastRCNNPredictor(box_dim, outputs),
        "mask_head": MaskRCNNHeads(channels, list(mask_layers), 1),
        "mask_predictor": MaskRCNNPredictor(mask_layers[-1], mask_layers[-1], outputs),
    }


def load_maskrcnn_weights(model: nn.Module, path: str | Path) -> None:
    """Load a full Mask R-CNN state dict (or a structseg checkpoint holding one under ``model``)."""
    _load_state(model, path, "Mask R-CNN")
