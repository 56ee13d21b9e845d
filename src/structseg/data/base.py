"""What every structseg data set is: image/mask pairs plus class metadata."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

# (image uint8 (3,H,W), mask int64 (H,W)) -> (image, mask); see structseg.data.transforms
PairTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


RGB = tuple[int, int, int]


def rgb(values: Sequence[Any]) -> RGB:
    """Three channel values as an ``(r, g, b)`` tuple of Python ints."""
    r, g, b = values
    return (int(r), int(g), int(b))


@dataclass(frozen=True)
class ClassInfo:
    """Names, colors and the ignore value of a labeling scheme."""

    names: tuple[str, ...]
    palette: tuple[RGB, ...]
    ignore_index: int = 255
    ignore_color: RGB = (0, 0, 0)

    def __post_init__(self) -> None:
        if len(self.names) != len(self.palette):
            raise ValueError(
                f"ClassInfo: {len(self.names)} names but {len(self.palette)} palette colors"
            )

    @property
    def num_classes(self) -> int:
        return len(self.names)


class SegmentationDataset(Dataset):
    """Base class: ``ds[i]`` is ``(image, mask)``.

    Without a transform, ``image`` is uint8 ``(3, H, W)`` and ``mask`` int64
    ``(H, W)`` holding class ids in ``[0, num_classes)`` or ``classes.ignore_index``.
    A transform (see :mod:`structseg.data.transforms`) receives and returns that
    pair, usually converting the image to a normalized float tensor.
    """

    classes: ClassInfo
    transform: PairTransform | None = None

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Read one pair from storage, validated, before any transform."""
        raise NotImplementedError

    def load_mask(self, index: int) -> torch.Tensor:
        """Only the validated int64 mask of item ``index``; statistics use it to skip image decoding."""
        return self.load(index)[1]

    def describe(self, index: int) -> str:
        """Human-readable origin of item ``index`` (file names), used in errors."""
        return f"item {index}"

    def item_name(self, index: int) -> str:
        """A short name of item ``index`` for figures and for picking items by name (its image file's name)."""
        return f"item {index}"

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load(index)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image, mask


def scan_dataset(dataset: SegmentationDataset, *, limit: int | None = None, progress: bool = False,
                 desc: str = "check") -> tuple[int, list[str]]:
    """Read (and validate) every pair of ``dataset`` (the first ``limit``): (items read, one line per bad item).
    What ``structseg data check`` prints, and what training runs over each split before its first step."""
    from tqdm.auto import tqdm

    from structseg.errors import DataError

    size = len(dataset) if limit is None else min(limit, len(dataset))
    bad = []
    for i in tqdm(range(size), desc=desc, unit="item", disable=not progress, leave=False):
        try:
            dataset.load(i)
        except DataError as exc:
            bad.append(str(exc))
    return size, bad
