"""Class tools: mask <-> color conversion, class frequencies and loss weights."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from structseg.data.base import ClassInfo, SegmentationDataset
from structseg.errors import DataError

WEIGHT_METHODS = ("inverse", "median", "enet")


def _as_numpy(x: torch.Tensor | np.ndarray | Sequence[int] | Sequence[float]) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def decode_target(mask: torch.Tensor | np.ndarray, classes: ClassInfo) -> np.ndarray:
    """Color a mask of class ids (any leading shape, e.g. ``(H, W)``) as uint8 RGB ``(..., 3)``.

    ``classes.ignore_index`` becomes ``classes.ignore_color``; any other value outside
    ``[0, num_classes)`` is a :class:`DataError`.
    """
    mask = _as_numpy(mask).astype(np.int64, copy=False)
    k, ignore = classes.num_classes, classes.ignore_index
    lut = np.zeros((max(k, ignore + 1), 3), dtype=np.uint8)
    lut[:k] = classes.palette
    lut[ignore] = classes.ignore_color
    valid = ((mask >= 0) & (mask < k)) | (mask == ignore)
    if not valid.all():
        bad = np.unique(mask[~valid])[:10].tolist()
        raise DataError(f"decode_target: label value(s) {bad} are neither a class of {k} nor ignore {ignore}")
    return lut[mask]


def _pack_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64, copy=False)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def encode_target(
    rgb: torch.Tensor | np.ndarray, classes: ClassInfo, *, source: str | Path | None = None
) -> torch.Tensor:
    """Inverse of :func:`decode_target`: uint8 RGB ``(H, W, 3)`` -> int64 class ids ``(H, W)``.

    ``classes.ignore_color`` maps to ``ignore_index`` unless a class has that color (the
    class wins). A color that is in neither raises :class:`DataError` naming it and ``source``.
    """
    rgb = _as_numpy(rgb)
    where = f"{source}: " if source is not None else "encode_target: "
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise DataError(f"{where}expected an RGB array (H, W, 3), got shape {rgb.shape}")
    keys = [_pack_rgb(np.array(c)) for c in classes.palette]
    if len(set(int(k) for k in keys)) != len(keys):
        raise DataError(f"{where}palette has repeated colors, masks cannot be encoded unambiguously")
    values = list(range(classes.num_classes))
    ignore_key = _pack_rgb(np.array(classes.ignore_color))
    if ignore_key not in keys:
        keys.append(ignore_key)
        values.append(classes.ignore_index)
    keys_arr, values_arr = np.array(keys, dtype=np.int64), np.array(values, dtype=np.int64)
    order = np.argsort(keys_arr)
    keys_arr, values_arr = keys_arr[order], values_arr[order]

    packed = _pack_rgb(rgb)
    pos = np.clip(np.searchsorted(keys_arr, packed), 0, len(keys_arr) - 1)
    found = keys_arr[pos] == packed
    if not found.all():
        unknown = np.unique(packed[~found])
        colors = ", ".join(f"({u >> 16}, {(u >> 8) & 255}, {u & 255})" for u in unknown[:5].tolist())
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise DataError(f"{where}color(s) {colors}{more} not in the palette")
    return torch.from_numpy(values_arr[pos])


@dataclass
class ClassStats:
    """Per-class label statistics of one split."""

    pixels: np.ndarray  # (K,) pixels labelled with each class
    images: np.ndarray  # (K,) images containing each class
    image_pixels: np.ndarray  # (K,) all pixels of the images that contain each class
    ignored: int  # pixels with the ignore value
    num_images: int

    @property
    def frequency(self) -> np.ndarray:
        """Share of each class among labelled (non-ignored) pixels."""
        total = self.pixels.sum()
        return self.pixels / total if total else np.zeros(len(self.pixels))


class _MaskCounts(Dataset):
    """Per-item class pixel counts, so DataLoader workers return K numbers instead of masks."""

    def __init__(self, dataset: SegmentationDataset, size: int) -> None:
        self.dataset, self.size = dataset, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> np.ndarray:
        mask = self.dataset.load_mask(index).numpy().ravel()
        k, ignore = self.dataset.classes.num_classes, self.dataset.classes.ignore_index
        counts = np.bincount(mask, minlength=max(k, ignore) + 1)
        return np.append(counts[:k], [counts[ignore], mask.size])


def class_statistics(
    dataset: SegmentationDataset, *, limit: int | None = None, workers: int = 0, progress: bool = True
) -> ClassStats:
    """Scan the masks of ``dataset`` (no image decoding, no transform) and count pixels per class."""
    k = dataset.classes.num_classes
    size = len(dataset) if limit is None else min(limit, len(dataset))
    loader = DataLoader(_MaskCounts(dataset, size), batch_size=None, num_workers=workers)
    pixels, images, image_pixels = (np.zeros(k, dtype=np.int64) for _ in range(3))
    ignored = 0
    for row in tqdm(loader, total=size, desc="class statistics", unit="mask", disable=not progress):
        row = _as_numpy(row)
        counts, ignore_count, total = row[:k], int(row[k]), int(row[k + 1])
        present = counts > 0
        pixels += counts
        images += present
        image_pixels += present * total
        ignored += ignore_count
    return ClassStats(pixels, images, image_pixels, ignored, size)


def class_frequency(
    dataset: SegmentationDataset, *, limit: int | None = None, workers: int = 0, progress: bool = True
) -> np.ndarray:
    """Pixel count of each class over the split, int64 ``(K,)``; see :func:`class_statistics`."""
    return class_statistics(dataset, limit=limit, workers=workers, progress=progress).pixels


def class_weights(
    counts: ClassStats | Sequence[int] | np.ndarray | torch.Tensor,
    method: str = "enet",
    *,
    image_pixels: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    c: float = 1.02,
) -> torch.Tensor:
    """Loss weights from per-class pixel counts, float32 ``(K,)``.

    With ``p_k = n_k / sum(n)`` over the ``P`` present classes:

    - ``"inverse"``: ``1 / (P * p_k)`` (all ones for a balanced set);
    - ``"median"``: median frequency balancing ``median(f) / f_k`` (Eigen & Fergus), where
      ``f_k`` is ``n_k`` over the pixels of the images containing class k when
      ``image_pixels`` is known (a :class:`ClassStats` carries it), else ``p_k``;
    - ``"enet"``: ``1 / ln(c + p_k)`` with ``c = 1.02`` (Paszke et al.).

    Classes with no pixels get weight 0: they never reach the loss.
    """
    if isinstance(counts, ClassStats):
        image_pixels = counts.image_pixels if image_pixels is None else image_pixels
        counts = counts.pixels
    n = _as_numpy(counts).astype(np.float64)
    if n.ndim != 1 or (n < 0).any():
        raise DataError(f"class_weights: counts must be a non-negative 1-D array, got {n}")
    present = n > 0
    if not present.any():
        raise DataError("class_weights: every class count is zero")
    p = n / n.sum()
    w = np.zeros_like(p)
    if method == "inverse":
        w[present] = 1.0 / (present.sum() * p[present])
    elif method == "median":
        if image_pixels is not None:
            f = n / np.maximum(_as_numpy(image_pixels).astype(np.float64), 1)
        else:
            f = p
        w[present] = np.median(f[present]) / f[present]
    elif method == "enet":
        w[present] = 1.0 / np.log(c + p[present])
    else:
        raise DataError(f"class_weights: unknown method {method!r}; choose from {', '.join(WEIGHT_METHODS)}")
    return torch.tensor(w, dtype=torch.float32)
