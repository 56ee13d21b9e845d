"""Cityscapes fine annotations mapped to the 19 standard training classes.

::

    root/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png
    root/gtFine/<split>/<city>/<name>_gtFine_labelIds.png

Label ids 0-33 (and 255, written for the license plate's id -1) are valid: the 19
evaluated ones map to train ids 0-18, every other one to 255. Any other stored
value is a DataError.
"""
from __future__ import annotations

from pathlib import Path

from structseg.data.base import ClassInfo, PairTransform
from structseg.data.io import LabelMap
from structseg.data.pairs import PairedFileDataset, require_dir

# (name, label id, color) of the 19 training classes, in train-id order
_TRAIN_CLASSES = (
    ("road", 7, (128, 64, 128)), ("sidewalk", 8, (244, 35, 232)), ("building", 11, (70, 70, 70)),
    ("wall", 12, (102, 102, 156)), ("fence", 13, (190, 153, 153)), ("pole", 17, (153, 153, 153)),
    ("traffic_light", 19, (250, 170, 30)), ("traffic_sign", 20, (220, 220, 0)),
    ("vegetation", 21, (107, 142, 35)), ("terrain", 22, (152, 251, 152)), ("sky", 23, (70, 130, 180)),
    ("person", 24, (220, 20, 60)), ("rider", 25, (255, 0, 0)), ("car", 26, (0, 0, 142)),
    ("truck", 27, (0, 0, 70)), ("bus", 28, (0, 60, 100)), ("train", 31, (0, 80, 100)),
    ("motorcycle", 32, (0, 0, 230)), ("bicycle", 33, (119, 11, 32)),
)
NUM_LABEL_IDS = 34

CITYSCAPES_CLASSES = ClassInfo(
    names=tuple(name for name, _, _ in _TRAIN_CLASSES),
    palette=tuple(color for _, _, color in _TRAIN_CLASSES),
    ignore_index=255,
    ignore_color=(0, 0, 0),
)


def label_id_to_train_id(ignore_index: int = 255) -> dict[int, int]:
    """Every Cityscapes label id 0-33 -> its train id, or ``ignore_index``."""
    mapping = {label_id: ignore_index for label_id in range(NUM_LABEL_IDS)}
    mapping.update({label_id: train_id for train_id, (_, label_id, _) in enumerate(_TRAIN_CLASSES)})
    return mapping


class Cityscapes(PairedFileDataset):
    """Cityscapes with gtFine labelIds; ``split`` is "train", "val" or "test"."""

    def __init__(self, root: str | Path, split: str = "train", *, transform: PairTransform | None = None) -> None:
        root = require_dir(Path(root), "Cityscapes root")
        image_dir = require_dir(root / "leftImg8bit" / split, f"Cityscapes {split} images")
        label_dir = require_dir(root / "gtFine" / split, f"Cityscapes {split} labels")
        samples = []
        for image in sorted(image_dir.glob("*/*_leftImg8bit.png")):
            name = image.name[: -len("_leftImg8bit.png")]
            samples.append((image, label_dir / image.parent.name / f"{name}_gtFine_labelIds.png"))
        labels = LabelMap(CITYSCAPES_CLASSES.num_classes, CITYSCAPES_CLASSES.ignore_index, remap=label_id_to_train_id())
        super().__init__(samples, CITYSCAPES_CLASSES, labels, root=root, split=split, transform=transform)
