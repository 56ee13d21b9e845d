"""Instance-segmentation data sets: images with Mask R-CNN targets.

``ds[i] -> (image float32 (3, H, W) in [0, 1], target)`` where ``target`` holds
``boxes``, ``labels``, ``masks`` (see :mod:`structseg.instance.targets`) and
``image_id`` (= ``i``). Layouts:

- ``voc``: PASCAL VOC 2012 ``SegmentationObject`` (instance ids, 255 borders) with
  ``SegmentationClass`` (the class of each instance, by majority).
- any layout of :func:`structseg.data.build_dataset` whose data set has
  ``load_instances(i)`` (the ``synthetic`` one does).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from structseg.data.base import ClassInfo
from structseg.data.io import read_image, read_label_array
from structseg.data.voc import VOC_NAMES, voc_palette
from structseg.errors import ConfigError, DataError
from structseg.instance.targets import targets_from_maps

Target = dict[str, torch.Tensor]

VOC_INSTANCE_CLASSES = ClassInfo(names=VOC_NAMES, palette=voc_palette(len(VOC_NAMES)), ignore_index=255)


class InstanceDataset(Dataset):
    """Base class: subclasses implement ``__len__``, ``load(i) -> (uint8 image (3,H,W), target)``."""

    classes: ClassInfo
    hflip: float = 0.0

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, index: int) -> tuple[torch.Tensor, Target]:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        return f"item {index}"

    @property
    def category_names(self) -> list[str]:
        """Name of detection label ``l`` at position ``l - 1``."""
        return list(self.classes.names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        image, target = self.load(index)
        target = dict(target)
        if self.hflip > 0 and torch.rand(()) < self.hflip:
            width = image.shape[-1]
            image = image.flip(-1)
            target["masks"] = target["masks"].flip(-1)
            boxes = target["boxes"].clone()
            boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
            target["boxes"] = boxes
        target["image_id"] = torch.tensor(index)
        return image.float() / 255.0, target


class MapInstances(InstanceDataset):
    """In-memory images with instance-id maps and class maps (tiny data, tests)."""

    def __init__(
        self,
        images: Sequence[torch.Tensor | np.ndarray],
        instance_maps: Sequence[np.ndarray | torch.Tensor],
        class_maps: Sequence[np.ndarray | torch.Tensor],
        classes: ClassInfo,
        *,
        background: Sequence[int] = (),
        hflip: float = 0.0,
    ) -> None:
        if not len(images) == len(instance_maps) == len(class_maps):
            raise DataError(f"{len(images)} images, {len(instance_maps)} instance maps, {len(class_maps)} class maps")
        self.images = [torch.as_tensor(np.asarray(im)) for im in images]
        self.instance_maps, self.class_maps = list(instance_maps), list(class_maps)
        self.classes, self.background, self.hflip = classes, tuple(background), hflip

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[torch.Tensor, Target]:
        target = targets_from_maps(
            self.instance_maps[index], self.class_maps[index],
            ignore_index=self.classes.ignore_index, background=self.background,
        )
        return self.images[index].to(torch.uint8), target


def _find_voc_base(root: Path) -> Path:
    for candidate in (root, root / "VOCdevkit" / "VOC2012", root / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise DataError(f"{root}: no JPEGImages/ here nor in VOCdevkit/VOC2012/ (PASCAL VOC 2012 layout expected)")


class VOCInstances(InstanceDataset):
    """PASCAL VOC 2012 instances: ``SegmentationObject`` ids, classes from ``SegmentationClass``.

    Both PNGs are palette images whose indices are the values; 255 marks the void
    border, which belongs to no instance.
    """

    def __init__(self, root: str | Path, split: str = "train", *, hflip: float = 0.0, min_area: int = 1) -> None:
        self.root = _find_voc_base(Path(root))
        list_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            raise DataError(f"{list_file}: VOC {split} list not found")
        self.names = [PurePosixPath(line.split()[0]).stem for line in list_file.read_text().splitlines()
                      if line.strip()]
        self.classes, self.hflip, self.min_area = VOC_INSTANCE_CLASSES, hflip, min_area

    def __len__(self) -> int:
        return len(self.names)

    def _paths(self, index: int) -> tuple[Path, Path, Path]:
        name = self.names[index]
        return (
            self.root / "JPEGImages" / f"{name}.jpg",
            self.root / "SegmentationObject" / f"{name}.png",
            self.root / "SegmentationClass" / f"{name}.png",
        )

    def describe(self, index: int) -> str:
        return ", ".join(str(p) for p in self._paths(index))

    def load(self, index: int) -> tuple[torch.Tensor, Target]:
        image_path, object_path, class_path = self._paths(index)
        image = read_image(image_path)
        objects, labels = read_label_array(object_path), read_label_array(class_path)
        for path, array in ((object_path, objects), (class_path, labels)):
            if array.ndim != 2:
                raise DataError(f"{path}: expected an index (palette) PNG, got shape {array.shape}")
            if array.shape != tuple(image.shape[1:]):
                raise DataError(f"{path}: size {array.shape} differs from image {image_path} {tuple(image.shape[1:])}")
        bad = labels[(labels != 255) & (labels >= len(VOC_NAMES))]
        if bad.size:
            raise DataError(f"{class_path}: class values {np.unique(bad)[:5].tolist()} are not VOC classes")
        target = targets_from_maps(objects, labels, ignore_index=255, background=(0,), min_area=self.min_area)
        return image, target


class LoadedInstances(InstanceDataset):
    """Instances of a ``structseg.data`` data set that has ``load_instances(i)``.

    ``load_instances(i)`` gives an instance-id map (0 = none) and the class of each
    instance; where the classes are a sequence, entry ``j`` belongs to id ``j + 1``.
    """

    def __init__(self, dataset: Any, *, background: Sequence[int] = (), hflip: float = 0.0, min_area: int = 1) -> None:
        if not hasattr(dataset, "load_instances"):
            raise ConfigError(f"{type(dataset).__name__} has no load_instances(i): it carries no instance annotations")
        self.dataset, self.classes = dataset, dataset.classes
        self.background, self.hflip, self.min_area = tuple(background), hflip, min_area

    def __len__(self) -> int:
        return len(self.dataset)

    def describe(self, index: int) -> str:
        return self.dataset.describe(index)

    def load(self, index: int) -> tuple[torch.Tensor, Target]:
        image, mask = self.dataset.load(index)
        instance_map, classes = self.dataset.load_instances(index)
        if isinstance(classes, dict):
            lookup = {int(k): int(v) for k, v in classes.items()}
        else:
            lookup = {j + 1: int(c) for j, c in enumerate(torch.as_tensor(classes).reshape(-1).tolist())}
        target = targets_from_maps(
            instance_map, mask, instance_classes=lookup, ignore_index=self.classes.ignore_index,
            background=self.background, min_area=self.min_area,
        )
        return image, target


def build_instance_dataset(
    layout: str,
    root: str | Path | None = None,
    split: str = "train",
    *,
    hflip: float = 0.0,
    background: Sequence[int] | None = None,
    **options: Any,
) -> InstanceDataset:
    """An instance data set: ``voc``, or any ``structseg.data`` layout with ``load_instances``."""
    if layout == "voc":
        if root is None:
            raise ConfigError("the voc layout needs a root folder")
        return VOCInstances(root, split, hflip=hflip, **options)
    from structseg.data import build_dataset

    dataset = build_dataset(layout, root, split, **options)
    if not hasattr(dataset, "load_instances"):
        raise ConfigError(f"layout {layout!r} has no instance annotations (its data set lacks load_instances); "
                          "use voc or synthetic")
    return LoadedInstances(dataset, background=background or (), hflip=hflip)


def collate_detection(batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """Detection batches stay lists: images differ in size and targets in instance count."""
    images, targets = zip(*batch)
    return list(images), list(targets)
