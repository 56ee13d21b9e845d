"""CamVid in the SegNet layout: 11 classes at 360x480, label 11 is void.

::

    root/train/*.png  root/trainannot/*.png  root/train.txt   (same for val, test)

Each line of ``<split>.txt`` is ``image_path label_path``. The paths usually carry
the prefix of the machine that wrote them (``/SegNet/CamVid/train/x.png``), so
only their last two components (``train/x.png``) are used, relative to ``root``.

When ``<split>.txt`` is missing but ``<split>/`` exists, images are paired by file
name with ``<split>annot/``; an image without its annotation then fails on load.
With neither, the error names the missing list file.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

from structseg.data.base import ClassInfo, PairTransform
from structseg.data.io import IMAGE_EXTENSIONS, LabelMap, read_text_file, require_unique_stems
from structseg.data.pairs import PairedFileDataset, require_dir
from structseg.errors import DataError

CAMVID_CLASSES = ClassInfo(
    names=("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol",
           "fence", "car", "pedestrian", "bicyclist"),
    palette=((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
             (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)),
    ignore_index=255,
    ignore_color=(0, 0, 0),
)
CAMVID_VOID = 11


def _local(root: Path, listed: str) -> Path:
    """A listed path re-rooted: its last two components under ``root``."""
    parts = PurePosixPath(listed.replace("\\", "/")).parts
    return root.joinpath(*parts[-2:])


def read_split_list(root: Path, list_file: Path) -> list[tuple[Path, Path]]:
    """Pairs of a SegNet list file; a malformed line is a DataError naming file and line."""
    pairs = []
    for number, line in enumerate(read_text_file(list_file, "CamVid list file").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DataError(f"{list_file}:{number}: expected 'image_path label_path', got {line.strip()!r}")
        pairs.append((_local(root, fields[0]), _local(root, fields[1])))
    return pairs


def pair_by_name(root: Path, split: str) -> list[tuple[Path, Path]]:
    """Pairs ``<split>/<name>`` with ``<split>annot/<stem>.png``."""
    image_dir = root / split
    annot_dir = root / f"{split}annot"
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    require_unique_stems(images, f"images in {image_dir}")
    return [(p, annot_dir / f"{p.stem}.png") for p in images]


class CamVid(PairedFileDataset):
    """CamVid (SegNet layout); ``split`` is "train", "val" or "test" (any name with a list file or folder)."""

    def __init__(self, root: str | Path, split: str = "train", *, transform: PairTransform | None = None) -> None:
        root = require_dir(Path(root), "CamVid root")
        list_file = root / f"{split}.txt"
        if list_file.is_file():
            samples = read_split_list(root, list_file)
        elif (root / split).is_dir():
            samples = pair_by_name(root, split)
        else:
            raise DataError(f"{list_file}: CamVid split list not found (nor a folder {root / split})")
        labels = LabelMap(CAMVID_CLASSES.num_classes, CAMVID_CLASSES.ignore_index, ignore_values=(CAMVID_VOID,))
        super().__init__(samples, CAMVID_CLASSES, labels, root=root, split=split, transform=transform)
