"""PASCAL VOC 2012 segmentation, optionally with the SBD "trainaug" masks.

::

    root/JPEGImages/<name>.jpg
    root/SegmentationClass/<name>.png          palette PNGs: the indices are the labels, 255 = ignore
    root/ImageSets/Segmentation/{train,val,trainval}.txt
    root/SegmentationClassAug/<name>.png       (aug=True) index PNGs from SBD
    root/ImageSets/Segmentation/train_aug.txt  (aug=True) or the path given as aug_list

``root`` may also be the folder that holds ``VOCdevkit/VOC2012`` (where the
official archive extracts to); ``download=True`` fetches that archive into it.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from structseg.data.base import RGB, ClassInfo, PairTransform, rgb
from structseg.data.download import download_and_extract
from structseg.data.io import LabelMap, read_text_file
from structseg.data.pairs import PairedFileDataset, require_dir, require_file
from structseg.errors import DataError

VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"

VOC_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def voc_colormap(n: int = 256) -> np.ndarray:
    """The VOC palette: the bits of each index spread over the high bits of R, G and B."""
    index = np.arange(n)
    cmap = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (index >> (3 * shift + channel)) & 1
            cmap[:, channel] |= bit << (7 - shift)
    return cmap.astype(np.uint8)


def voc_palette(n: int) -> tuple[RGB, ...]:
    """The first ``n`` VOC colors."""
    return tuple(rgb(c) for c in voc_colormap(n))


def numbered_classes(n: int, ignore_index: int = 255) -> ClassInfo:
    """``class_0 ... class_{n-1}`` in VOC colors: the classes of data or models that name none."""
    return ClassInfo(tuple(f"class_{i}" for i in range(n)), voc_palette(n), ignore_index=ignore_index)


VOC_CLASSES = ClassInfo(
    names=VOC_NAMES,
    palette=voc_palette(len(VOC_NAMES)),
    ignore_index=255,
    ignore_color=rgb(voc_colormap()[255]),
)


def find_voc_root(root: Path) -> Path | None:
    """The folder holding ``JPEGImages``: ``root`` itself or ``root/VOCdevkit/VOC2012``."""
    for candidate in (root, root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    return None


def _stem(token: str) -> str:
    return PurePosixPath(token.replace("\\", "/")).stem


class VOCSegmentation(PairedFileDataset):
    """VOC 2012 segmentation: 21 classes, 255 = ignore (object boundaries)."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        transform: PairTransform | None = None,
        aug: bool = False,
        aug_list: str | Path | None = None,
        download: bool = False,
        url: str = VOC_URL,
    ) -> None:
        given = Path(root)
        base = find_voc_root(given)
        if base is None and download:
            download_and_extract(url, given, hint=str(given / "VOCdevkit" / "VOC2012" / "JPEGImages"))
            base = find_voc_root(given)
        if base is None:
            require_dir(given, "VOC root")
            raise DataError(
                f"{given}: no JPEGImages/ here nor in VOCdevkit/VOC2012/; extract {url} into it "
                "(or pass download=True)"
            )
        list_dir = base / "ImageSets" / "Segmentation"
        if aug:
            mask_dir = require_dir(base / "SegmentationClassAug", "SBD trainaug masks (SegmentationClassAug)")
            if aug_list is not None:
                candidates = [Path(aug_list)]
            else:
                candidates = [list_dir / f"{split}_aug.txt"] + ([list_dir / f"{split}.txt"] if split != "train" else [])
            list_file = next((c for c in candidates if c.is_file()), candidates[0])
        else:
            mask_dir = base / "SegmentationClass"
            list_file = list_dir / f"{split}.txt"
        require_file(list_file, f"VOC {split} list")

        samples = []
        for line in read_text_file(list_file, f"VOC {split} list").split("\n"):
            fields = line.split()
            if fields:
                image_name = _stem(fields[0])
                mask_name = _stem(fields[1]) if len(fields) > 1 else image_name
                samples.append((base / "JPEGImages" / f"{image_name}.jpg", mask_dir / f"{mask_name}.png"))
        labels = LabelMap(VOC_CLASSES.num_classes, VOC_CLASSES.ignore_index)
        super().__init__(samples, VOC_CLASSES, labels, root=base, split=split, transform=transform)
