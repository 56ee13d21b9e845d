"""Joint image/mask augmentation built on ``torchvision.transforms.v2``.

The pair is wrapped as ``tv_tensors.Image`` / ``tv_tensors.Mask`` so that every
geometric step draws its parameters once and applies them to both; v2 resamples
masks with nearest neighbour and the fills below put the ignore index into
padded or rotated-in mask pixels (the image gets the mean color, which
normalizes to 0).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Size = int | tuple[int, int]


def _pair(size: Size) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    if len(size) != 2:
        raise ValueError(f"size must be an int or (height, width), got {size!r}")
    return (int(size[0]), int(size[1]))


class RandomScale(v2.Transform):
    """Resize by one factor drawn uniformly from ``scale_range`` (bilinear image, nearest mask)."""

    def __init__(self, scale_range: tuple[float, float]) -> None:
        super().__init__()
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range!r}")
        self.scale_range = (float(lo), float(hi))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        s = float(torch.empty(1).uniform_(*self.scale_range))
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, params["size"], antialias=True)


class PairPipeline:
    """A v2 pipeline as a pair transform ``(image uint8 (3,H,W), mask int64 (H,W)) -> (image, mask)``.

    Masks travel as uint8 through the pipeline when their values allow it (faster
    resampling) and come back as int64.
    """

    def __init__(self, pipeline: v2.Transform, ignore_index: int = 255) -> None:
        self.pipeline = pipeline
        self.ignore_index = ignore_index

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        small = 0 <= self.ignore_index <= 255 and (mask.numel() == 0
                                                   or (int(mask.min()) >= 0 and int(mask.max()) <= 255))
        image_out, mask_out = self.pipeline(
            tv_tensors.Image(image), tv_tensors.Mask(mask.to(torch.uint8) if small else mask)
        )
        return image_out.as_subclass(torch.Tensor), mask_out.as_subclass(torch.Tensor).to(torch.int64)

    def __repr__(self) -> str:
        return f"PairPipeline({self.pipeline!r})"


def _normalize(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ]


def train_transforms(
    *,
    crop_size: Size,
    scale_range: tuple[float, float] = (0.5, 2.0),
    hflip: float = 0.5,
    rotation: float = 0.0,
    color_jitter: float = 0.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    ignore_index: int = 255,
) -> PairPipeline:
    """Random scale, rotation (up to +-``rotation`` degrees), crop with padding, flip, color jitter, normalization.

    ``color_jitter`` is the brightness, contrast and saturation range; hue is left
    alone (on CPU a hue shift costs about as much as decoding the image).

    Output: float32 ``(3, *crop_size)`` normalized image and int64 mask; pixels that
    came from padding or rotation carry ``ignore_index``.
    """
    fill = {tv_tensors.Image: [round(255 * m) for m in mean], tv_tensors.Mask: ignore_index}
    steps: list[v2.Transform] = []
    if tuple(scale_range) != (1.0, 1.0):
        steps.append(RandomScale(scale_range))
    if rotation > 0:
        steps.append(v2.RandomRotation(rotation, interpolation=v2.InterpolationMode.BILINEAR, fill=fill))
    steps.append(v2.RandomCrop(_pair(crop_size), pad_if_needed=True, fill=fill))
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if color_jitter > 0:
        steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    return PairPipeline(v2.Compose(steps + _normalize(mean, std)), ignore_index)


def eval_transforms(
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    resize: Size | None = None,
) -> PairPipeline:
    """Whole image, normalized; ``resize`` (shorter side, or (H, W)) resamples the mask with nearest neighbour."""
    steps: list[v2.Transform] = []
    if resize is not None:
        steps.append(v2.Resize(resize if isinstance(resize, int) else _pair(resize), antialias=True))
    return PairPipeline(v2.Compose(steps + _normalize(mean, std)))


def resize_pair(image: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize a uint8 image (3, H, W) (box filter = area when shrinking, bilinear when growing) and its mask
    (H, W) (nearest) to ``size = (h, w)``: the one resize of an image with its labels."""
    import numpy as np
    from PIL import Image

    h, w = size
    if tuple(image.shape[-2:]) == (h, w):
        return image, mask
    shrink = image.shape[-2] >= h and image.shape[-1] >= w
    pil = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    img = np.asarray(pil.resize((w, h), Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR))
    labels = mask.numpy()
    small = labels.size == 0 or (labels.min() >= 0 and labels.max() < 256)
    lab = Image.fromarray(labels.astype(np.uint8 if small else np.int32)).resize((w, h), Image.Resampling.NEAREST)
    return (torch.from_numpy(img.copy()).permute(2, 0, 1).contiguous(),
            torch.from_numpy(np.asarray(lab).astype(np.int64)))
