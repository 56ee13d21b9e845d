"""A data set of (image file, mask file) pairs; the file layouts differ only in how they find the pairs."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from structseg._shapes import spatial_size
from structseg.data.base import ClassInfo, PairTransform, SegmentationDataset
from structseg.data.io import LabelMap, check_same_size, read_image, read_label_array
from structseg.errors import DataError

# stored mask array + its path -> int64 class ids
MaskDecoder = Callable[[np.ndarray, Path], torch.Tensor]


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a directory, else a DataError naming it."""
    if not path.is_dir():
        raise DataError(f"{path}: {what} not found")
    return path


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else a DataError naming it."""
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    return path


class PairedFileDataset(SegmentationDataset):
    """Image/mask file pairs decoded and validated on every :meth:`load`.

    Missing or unreadable files, size mismatches and invalid label values are
    reported per item, so a scan of the split can list every bad file.
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, Path]],
        classes: ClassInfo,
        decode_mask: MaskDecoder | LabelMap,
        *,
        root: Path,
        split: str,
        transform: PairTransform | None = None,
    ) -> None:
        self.samples = list(samples)
        self.classes = classes
        self.decode_mask = decode_mask
        self.root = root
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def _mask(self, index: int) -> tuple[torch.Tensor, Path]:
        path = self.samples[index][1]
        return self.decode_mask(read_label_array(path), path), path

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path = self.samples[index][0]
        image = read_image(image_path)
        mask, mask_path = self._mask(index)
        check_same_size(image_path, spatial_size(image), mask_path, spatial_size(mask))
        return image, mask

    def load_mask(self, index: int) -> torch.Tensor:
        return self._mask(index)[0]

    def describe(self, index: int) -> str:
        image_path, mask_path = self.samples[index]
        return f"image {image_path}, mask {mask_path}"

    def item_name(self, index: int) -> str:
        return Path(self.samples[index][0]).name

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"items={len(self)}, classes={self.classes.num_classes})"
        )
