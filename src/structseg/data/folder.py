"""A plain folder of images and masks.

::

    root/images/<split>/<name>.<jpg|png|...>
    root/masks/<split>/<name>.png
    root/classes.yaml  (or classes.json, or the option palette_file)

Masks are either index images (mode L or P: the values are class ids) or RGB
color images mapped through the palette. The palette file::

    classes:
      - {name: background, color: [0, 0, 0]}
      - {name: road, color: [128, 64, 128]}
      - car                         # a bare name: index masks only
    ignore_color: [255, 255, 255]   # optional
    ignore_index: 255               # optional

Without a palette file, ``num_classes`` gives the number of classes (named class_0, ...).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from structseg.data.base import ClassInfo, PairTransform, rgb
from structseg.data.classes import encode_target
from structseg.data.io import IMAGE_EXTENSIONS, LabelMap, read_text_file, require_unique_stems
from structseg.data.pairs import PairedFileDataset, require_dir
from structseg.data.voc import numbered_classes, voc_colormap
from structseg.errors import DataError

PALETTE_FILES = ("classes.yaml", "classes.yml", "classes.json")


def _color(value: Any, path: Path, field: str) -> tuple[int, int, int]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 3
        or not all(isinstance(v, int) and 0 <= v <= 255 for v in value)
    ):
        raise DataError(f"{path}: {field} must be three integers 0-255, got {value!r}")
    return (value[0], value[1], value[2])


def read_palette_file(path: str | Path) -> tuple[ClassInfo, bool]:
    """Classes from a YAML/JSON palette file, and whether every class has an explicit color."""
    path = Path(path)
    text = read_text_file(path, "palette file")
    try:
        spec = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise DataError(f"{path}: cannot parse palette file ({exc})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("classes"), list) or not spec["classes"]:
        raise DataError(f"{path}: expected a mapping with a non-empty 'classes' list")

    defaults = voc_colormap(len(spec["classes"]) + 1)[1:]
    names, palette, explicit = [], [], True
    for i, entry in enumerate(spec["classes"]):
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise DataError(f"{path}: classes[{i}] must be a name or a mapping with 'name' (and 'color')")
        names.append(entry["name"])
        if "color" in entry:
            palette.append(_color(entry["color"], path, f"classes[{i}].color"))
        else:
            explicit = False
            palette.append(rgb(defaults[i]))
    unknown = set(spec) - {"classes", "ignore_color", "ignore_index"}
    if unknown:
        raise DataError(f"{path}: unknown field(s) {', '.join(sorted(unknown))}")
    ignore_index = spec.get("ignore_index", 255)
    if not isinstance(ignore_index, int) or 0 <= ignore_index < len(names):
        raise DataError(f"{path}: ignore_index must be an integer outside [0, {len(names)}), got {ignore_index!r}")
    ignore_color = _color(spec["ignore_color"], path, "ignore_color") if "ignore_color" in spec else (0, 0, 0)
    classes = ClassInfo(tuple(names), tuple(palette), ignore_index=ignore_index, ignore_color=ignore_color)
    return classes, explicit


class _FolderMasks:
    """Decodes index masks through a LabelMap and color masks through the palette."""

    def __init__(self, classes: ClassInfo, colors_known: bool, palette_file: Path | None) -> None:
        self.classes = classes
        self.colors_known = colors_known
        self.palette_file = palette_file
        self.labels = LabelMap(classes.num_classes, classes.ignore_index)

    def __call__(self, raw: np.ndarray, path: Path) -> torch.Tensor:
        if raw.ndim == 2:
            return self.labels(raw, path)
        if not self.colors_known:
            where = self.palette_file or "no palette file"
            raise DataError(f"{path}: color mask but the palette ({where}) does not give every class a color")
        return encode_target(raw, self.classes, source=path)


# where the masks of a folder data set may live, first found wins
MASK_FOLDERS = ("masks", "labels")


class FolderDataset(PairedFileDataset):
    """``images/<split>`` and ``masks/<split>`` (or ``labels/<split>``) paired by file name."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        transform: PairTransform | None = None,
        palette_file: str | Path | None = None,
        num_classes: int | None = None,
        ignore_index: int = 255,
    ) -> None:
        root = require_dir(Path(root), "folder data set root")
        if palette_file is None:
            palette_file = next((root / n for n in PALETTE_FILES if (root / n).is_file()), None)
        if palette_file is not None:
            classes, explicit = read_palette_file(palette_file)
            if num_classes is not None and int(num_classes) != classes.num_classes:
                raise DataError(f"{palette_file}: lists {classes.num_classes} classes but num_classes={num_classes}")
        elif num_classes is not None:
            n = int(num_classes)
            classes = numbered_classes(n, ignore_index=int(ignore_index))
            explicit = False
        else:
            raise DataError(f"{root}: no {' / '.join(PALETTE_FILES)} here; pass palette_file or num_classes")

        image_dir = require_dir(root / "images" / split, f"{split} images")
        mask_dir = next((root / name / split for name in MASK_FOLDERS if (root / name / split).is_dir()), None)
        if mask_dir is None:
            raise DataError(f"{root / 'masks' / split}: {split} masks not found (nor {root / 'labels' / split})")
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        require_unique_stems(images, f"images in {image_dir}")
        samples = [(p, mask_dir / f"{p.stem}.png") for p in images]
        decode = _FolderMasks(classes, explicit, Path(palette_file) if palette_file else None)
        super().__init__(samples, classes, decode, root=root, split=split, transform=transform)
