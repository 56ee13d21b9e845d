"""Data sets, joint augmentation and class tools.

``build_dataset(layout, root, split, transform=..., **options)`` is the entry
point; the layouts are listed by :func:`list_layouts`. Submodules are imported
on first use so that the CLI's argument parsing does not import torch.
"""
from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from structseg.data.base import PairTransform, SegmentationDataset

# layout -> (module, class, takes a root)
_LAYOUTS: dict[str, tuple[str, str, bool]] = {
    "voc": ("structseg.data.voc", "VOCSegmentation", True),
    "camvid": ("structseg.data.camvid", "CamVid", True),
    "cityscapes": ("structseg.data.cityscapes", "Cityscapes", True),
    "folder": ("structseg.data.folder", "FolderDataset", True),
    "synthetic": ("structseg.data.synthetic", "SyntheticShapes", False),
}

# public name -> module that defines it, imported lazily by __getattr__
_EXPORTS = {
    "ClassInfo": "structseg.data.base",
    "SegmentationDataset": "structseg.data.base",
    "decode_target": "structseg.data.classes",
    "encode_target": "structseg.data.classes",
    "class_statistics": "structseg.data.classes",
    "class_frequency": "structseg.data.classes",
    "class_weights": "structseg.data.classes",
    "ClassStats": "structseg.data.classes",
    "train_transforms": "structseg.data.transforms",
    "eval_transforms": "structseg.data.transforms",
}

__all__ = ["build_dataset", "list_layouts", "default_root", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'structseg.data' has no attribute {name!r}")


def list_layouts() -> list[str]:
    """Names accepted by :func:`build_dataset`."""
    return list(_LAYOUTS)


def default_root(layout: str) -> Path | None:
    """Root from the environment variable ``STRUCTSEG_<LAYOUT>`` (e.g. ``STRUCTSEG_CAMVID``), if set."""
    value = os.environ.get(f"STRUCTSEG_{layout.upper()}")
    return Path(value) if value else None


def build_dataset(
    layout: str,
    root: str | Path | None = None,
    split: str = "train",
    *,
    transform: PairTransform | None = None,
    **options: Any,
) -> SegmentationDataset:
    """The ``split`` of the data set stored at ``root`` in ``layout``.

    ``options`` go to the layout's class (e.g. ``aug=True`` for VOC, ``seed``/``size``/``length``
    for synthetic); unknown ones are a DataError listing those it accepts.
    """
    from structseg.errors import DataError

    if layout not in _LAYOUTS:
        raise DataError(f"unknown data layout {layout!r}; choose from {', '.join(_LAYOUTS)}")
    module_name, class_name, takes_root = _LAYOUTS[layout]
    cls = getattr(importlib.import_module(module_name), class_name)
    accepted = [
        p.name for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "transform"
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DataError(
            f"layout {layout!r}: unknown option(s) {', '.join(unknown)}; accepted: {', '.join(accepted) or 'none'}"
        )
    args: tuple[Any, ...] = (split,)
    if takes_root:
        root = root if root is not None else default_root(layout)
        if root is None:
            raise DataError(
                f"layout {layout!r} needs a root folder (pass root / --root, or set STRUCTSEG_{layout.upper()})"
            )
        args = (root, split)
    try:
        return cls(*args, transform=transform, **options)
    except DataError:
        raise
    except (TypeError, ValueError) as exc:
        raise DataError(f"layout {layout!r}: bad option value in {options} ({exc})") from None
