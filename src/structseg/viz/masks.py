"""Label maps to colors, and color masks over images."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def to_numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def image_to_hwc(image: ArrayLike) -> np.ndarray:
    """An RGB image as uint8 ``(H, W, 3)``; accepts ``(3, H, W)`` tensors and float [0, 1] arrays."""
    arr = to_numpy(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.dtype != np.uint8:
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        arr = np.clip(arr.astype(np.float64) * scale, 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(arr)


def colorize(
    mask: ArrayLike,
    palette: Sequence[Sequence[int]],
    ignore_index: int = 255,
    ignore_color: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """Label map ``(H, W)`` -> uint8 ``(H, W, 3)``; ignored or out-of-range labels get ``ignore_color``."""
    labels = to_numpy(mask).astype(np.int64)
    lut = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    out = np.empty(labels.shape + (3,), dtype=np.uint8)
    out[...] = np.asarray(ignore_color, dtype=np.uint8)
    valid = (labels >= 0) & (labels < len(lut)) & (labels != ignore_index)
    out[valid] = lut[labels[valid]]
    return out


def overlay(image: ArrayLike, colored: ArrayLike, alpha: float = 0.5) -> np.ndarray:
    """Blend a color mask over an image: ``(1 - alpha) * image + alpha * mask``."""
    base = image_to_hwc(image).astype(np.float32)
    top = image_to_hwc(colored).astype(np.float32)
    if base.shape != top.shape:
        raise ValueError(f"overlay: image {base.shape} and mask {top.shape} differ in size")
    return np.clip((1.0 - alpha) * base + alpha * top, 0, 255).round().astype(np.uint8)


def denormalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalized float ``(3, H, W)`` tensor back to uint8 ``(H, W, 3)``."""
    m = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    restored = (image * s + m).clamp(0, 1)
    return image_to_hwc((restored * 255).round().to(torch.uint8))
