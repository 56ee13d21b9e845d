"""Segmentation losses: cross-entropy, focal, Dice, soft IoU, Lovász-softmax, OHEM, KL, MSE, weighted sums.

Every loss takes ``(logits (N,K,H,W), target (N,H,W) long)`` and returns a scalar,
honours ``ignore_index`` and optional per-class ``class_weights``. Build them from
configuration with :func:`build_loss`; :func:`list_losses` names the choices.
"""
from structseg.losses.base import SegLoss
from structseg.losses.combined import WeightedSumLoss
from structseg.losses.cross_entropy import CrossEntropyLoss, OhemCrossEntropyLoss
from structseg.losses.factory import build_loss, list_losses, loss_params
from structseg.losses.focal import FocalLoss
from structseg.losses.kl import KLDivergenceLoss
from structseg.losses.lovasz import LovaszSoftmaxLoss
from structseg.losses.mse import MSELoss
from structseg.losses.region import DiceLoss, SoftIoULoss

__all__ = [
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "KLDivergenceLoss",
    "LovaszSoftmaxLoss",
    "MSELoss",
    "OhemCrossEntropyLoss",
    "SegLoss",
    "SoftIoULoss",
    "WeightedSumLoss",
    "build_loss",
    "list_losses",
    "loss_params",
]
