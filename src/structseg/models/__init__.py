"""Segmentation models: torchvision and EfficientNet-Lite backbones, FCN / U-Net / DeepLab / UperNet heads, one factory.

``build_model(name, num_classes, ...)`` builds any registered model (``list_models()``); every model is a
:class:`SegmentationModel` returning logits at the input resolution for any input size.
"""
from structseg.models.backbones import Backbone, backbone_imagenet_weights, build_backbone, list_backbones
from structseg.models.base import FCNHead, SegmentationModel
from structseg.models.deeplab import (
    ASPP,
    ASPPConv,
    ASPPPooling,
    DeepLabHead,
    DeepLabHeadV3Plus,
    DeepLabV3,
    DeepLabV3Plus,
)
from structseg.models.factory import ModelSpec, build_model, list_models, model_spec
from structseg.models.fcn import FCN, BilinearUpsample, FCNSkip
from structseg.models.fold import fold_batchnorm
from structseg.models.unet import UNet, UNetResNet
from structseg.models.upernet import UperNet
from structseg.models.weights import ImageNetWeights

__all__ = [
    "ASPP",
    "ASPPConv",
    "ASPPPooling",
    "Backbone",
    "BilinearUpsample",
    "DeepLabHead",
    "DeepLabHeadV3Plus",
    "DeepLabV3",
    "DeepLabV3Plus",
    "FCN",
    "FCNHead",
    "FCNSkip",
    "ImageNetWeights",
    "ModelSpec",
    "SegmentationModel",
    "UNet",
    "UNetResNet",
    "UperNet",
    "backbone_imagenet_weights",
    "build_backbone",
    "build_model",
    "fold_batchnorm",
    "list_backbones",
    "list_models",
    "model_spec",
]
