"""Shared fixtures: tiny data sets written to tmp_path in every file layout.

``make_tiny_dataset(layout, ...)`` returns a :class:`TinyData` whose ``items``
hold, per split, each item's name, its RGB image and the mask a reader must
produce (class ids, 255 = ignore), computed here independently of structseg.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

# Cityscapes label ids of the 19 training classes, in train-id order (cityscapesScripts labels.py)
CITYSCAPES_TRAIN_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
FOLDER_PALETTE = ((0, 0, 0), (200, 30, 30), (30, 200, 30), (30, 30, 200))
FOLDER_IGNORE_COLOR = (255, 255, 255)


@dataclass
class TinyItem:
    name: str
    image: np.ndarray  # (H, W, 3) uint8 as written (JPEG: before compression)
    mask: np.ndarray  # (H, W) int64 expected class ids, 255 = ignore
    image_path: Path
    mask_path: Path


@dataclass
class TinyData:
    layout: str
    root: Path
    num_classes: int
    items: dict[str, list[TinyItem]]
    options: dict[str, Any] = field(default_factory=dict)


def blocky_labels(rng: np.random.Generator, size: tuple[int, int], values: np.ndarray, block: int = 4) -> np.ndarray:
    """Random labels constant over ``block`` x ``block`` tiles (so resampling keeps tile interiors)."""
    h, w = size
    coarse = rng.choice(values, size=(-(-h // block), -(-w // block)))
    return np.repeat(np.repeat(coarse, block, 0), block, 1)[:h, :w]


def voc_palette() -> list[int]:
    """VOC's 256-color palette, flattened for PIL (bit-interleaved index, see the devkit)."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def _save_png(array: np.ndarray, path: Path, mode: str | None = None, palette: list[int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array.astype(np.uint8), mode) if mode else Image.fromarray(array.astype(np.uint8))
    if palette is not None:
        image.putpalette(palette)
    image.save(path)
    return path


def write_tiny_dataset(
    layout: str,
    root: Path,
    *,
    splits: tuple[str, ...] = ("train", "val"),
    n: int = 3,
    size: tuple[int, int] = (24, 32),
    seed: int = 0,
    color_masks: bool = False,
    aug: bool = False,
) -> TinyData:
    """Write ``n`` items per split in ``layout`` under ``root``; see the module docstring."""
    rng = np.random.default_rng(seed)
    items: dict[str, list[TinyItem]] = {}
    options: dict[str, Any] = {}
    num_classes = {"voc": 21, "camvid": 11, "cityscapes": 19, "folder": len(FOLDER_PALETTE)}[layout]
    for split in splits:
        items[split] = []
        for i in range(n):
            name = f"{split}_{i:03d}"
            image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            if layout == "voc":
                stored = blocky_labels(rng, size, np.r_[np.arange(21), 255])
                mask = stored
                image = np.stack([blocky_labels(rng, size, np.arange(256), block=8) for _ in range(3)], -1)
                image_path = root / "JPEGImages" / f"{name}.jpg"
                image_path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image.astype(np.uint8)).save(image_path, quality=95, subsampling=0)
                mask_dir = "SegmentationClassAug" if aug else "SegmentationClass"
                mask_path = _save_png(stored, root / mask_dir / f"{name}.png", "P" if not aug else "L",
                                      voc_palette() if not aug else None)
            elif layout == "camvid":
                stored = blocky_labels(rng, size, np.arange(12))  # 11 = void
                mask = np.where(stored == 11, 255, stored)
                image_path = _save_png(image, root / split / f"{name}.png")
                mask_path = _save_png(stored, root / f"{split}annot" / f"{name}.png", "L")
            elif layout == "cityscapes":
                stored = blocky_labels(rng, size, np.r_[np.arange(34), 255])
                lut = np.full(256, 255)
                lut[list(CITYSCAPES_TRAIN_LABEL_IDS)] = np.arange(19)
                mask = lut[stored]
                city = "aachen" if i < (n + 1) // 2 else "bremen"  # keeps sorted order = index order
                image_path = _save_png(image, root / "leftImg8bit" / split / city / f"{city}_{name}_leftImg8bit.png")
                mask_path = _save_png(stored, root / "gtFine" / split / city / f"{city}_{name}_gtFine_labelIds.png",
                                      "L")
            elif layout == "folder":
                mask = blocky_labels(rng, size, np.r_[np.arange(num_classes), 255])
                image_path = _save_png(image, root / "images" / split / f"{name}.png")
                if color_masks:
                    colors = np.array([*FOLDER_PALETTE] + [FOLDER_IGNORE_COLOR] * (256 - num_classes))
                    mask_path = _save_png(colors[mask], root / "masks" / split / f"{name}.png")
                else:
                    mask_path = _save_png(mask, root / "masks" / split / f"{name}.png", "L")
            else:
                raise ValueError(f"no tiny writer for layout {layout!r}")
            items[split].append(TinyItem(name, image, mask.astype(np.int64), image_path, mask_path))

    if layout == "voc":
        lists = root / "ImageSets" / "Segmentation"
        lists.mkdir(parents=True, exist_ok=True)
        for split, split_items in items.items():
            suffix = "_aug" if aug else ""
            (lists / f"{split}{suffix}.txt").write_text("".join(f"{it.name}\n" for it in split_items))
        if aug:
            options["aug"] = True
    elif layout == "camvid":
        for split, split_items in items.items():
            (root / f"{split}.txt").write_text("".join(
                f"/SegNet/CamVid/{split}/{it.name}.png /SegNet/CamVid/{split}annot/{it.name}.png\n"
                for it in split_items))
    elif layout == "folder":
        entries = "".join(
            f"  - {{name: c{k}, color: [{r}, {g}, {b}]}}\n" for k, (r, g, b) in enumerate(FOLDER_PALETTE)
        )
        ignore = ", ".join(str(v) for v in FOLDER_IGNORE_COLOR)
        (root / "classes.yaml").write_text(f"classes:\n{entries}ignore_color: [{ignore}]\n")
    return TinyData(layout, root, num_classes, items, options)


@pytest.fixture
def make_tiny_dataset(tmp_path: Path) -> Callable[..., TinyData]:
    """Factory: ``make_tiny_dataset("camvid", n=3, size=(24, 32))`` -> TinyData under a fresh tmp folder."""
    counter = iter(range(1000))

    def make(layout: str, **kwargs: Any) -> TinyData:
        return write_tiny_dataset(layout, tmp_path / f"{layout}_{next(counter)}", **kwargs)

    return make


def camvid_root() -> Path | None:
    """The shared CamVid copy ($STRUCTSEG_CAMVID, else ../shared/datasets/camvid beside the repo), if present."""
    env = os.environ.get("STRUCTSEG_CAMVID")
    root = Path(env) if env else Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "camvid"
    return root if (root / "train.txt").is_file() else None


@pytest.fixture
def camvid_dir() -> Path:
    """Path of the real CamVid data set; skips the test when it is absent."""
    root = camvid_root()
    if root is None:
        pytest.skip("CamVid not found (set STRUCTSEG_CAMVID or put it in ../shared/datasets/camvid)")
    return root


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for tests on tiny tensors: on a shared 2-core machine a second thread mostly
    waits (OpenMP hand-offs measured 10-40x slower under load)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

