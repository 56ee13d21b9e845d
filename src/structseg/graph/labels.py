"""Ground truth on a coarser grid: label maps reduced to the cells of a feature map."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from structseg.errors import ConfigError

__all__ = ["downsample_labels"]


def downsample_labels(
    target: Tensor, size: tuple[int, int], num_classes: int, ignore_index: int = 255,
    mode: str = "majority", min_valid: float = 0.5,
) -> Tensor:
    """Labels (N, H, W) -> (N, h, w), one rule for every structured model.

    "majority": the most frequent labelled class of each cell (area pooling of one-hot masks); pixels equal
    to ``ignore_index`` or outside ``0..num_classes-1`` are unlabelled, and a cell whose labelled pixels cover
    less than ``min_valid`` of it becomes ``ignore_index``. "nearest": nearest-neighbour sampling.
    """
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    if mode == "nearest":
        return F.interpolate(target[:, None].float(), size=size, mode="nearest")[:, 0].long()
    if mode != "majority":
        raise ConfigError(f"unknown label downsampling mode {mode!r}; valid: majority, nearest")
    valid = (target != ignore_index) & (target >= 0) & (target < num_classes)
    t = torch.where(valid, target, torch.full_like(target, num_classes))
    onehot = F.one_hot(t, num_classes + 1).movedim(-1, 1).float()
    share = F.adaptive_avg_pool2d(onehot, size)
    labelled = share[:, :num_classes].sum(1)
    label = share[:, :num_classes].argmax(1)
    return torch.where(labelled >= min_valid, label, torch.full_like(label, ignore_index))
