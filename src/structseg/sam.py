"""Segment Anything as one more column of ``structseg compare``.

SAM's automatic mask generator proposes class-free masks from a grid of point
prompts. :func:`sam_segments` flattens them into a segment map (larger masks first,
smaller ones painted over them; pixels no mask covers are split into their connected
components). :func:`sam_column` then names every segment by majority vote of the
ground truth (an oracle labeling: SAM's segments with perfect names), or of a
semantic network's prediction (the prediction snapped to SAM's segments), or leaves
them as randomly colored segments.

Weights are never downloaded here: :func:`load_sam` wants the official checkpoint on
disk and says which file to fetch and where to put it when it is missing.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from structseg.errors import CheckpointError, ConfigError, DataError, WeightsUnavailableError

SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
SAM_FILES = {
    "vit_b": "sam_vit_b_01ec64.pth",  # 375 MB
    "vit_l": "sam_vit_l_0b3195.pth",  # 1.2 GB
    "vit_h": "sam_vit_h_4b8939.pth",  # 2.6 GB
}
SAM_FILES["default"] = SAM_FILES["vit_h"]

# More architectures by name: a function returning a randomly initialised ``Sam``.
EXTRA_SAM_TYPES: dict[str, Callable[[], Any]] = {}


def sam_dir() -> Path:
    """Where checkpoints are looked for by default: ``$STRUCTSEG_SAM_DIR`` or ``~/.cache/structseg/sam``."""
    return Path(os.environ.get("STRUCTSEG_SAM_DIR", "~/.cache/structseg/sam")).expanduser()


def default_checkpoint(model_type: str = "vit_b") -> Path:
    """The default path of ``model_type``'s official checkpoint."""
    if model_type not in SAM_FILES:
        raise ConfigError(f"no official checkpoint for SAM type {model_type!r}; pass checkpoint=PATH")
    return sam_dir() / SAM_FILES[model_type]


def require_segment_anything() -> None:
    """Fail early, naming the package to install, when ``segment_anything`` is missing."""
    import importlib.util

    if importlib.util.find_spec("segment_anything") is None:
        raise ConfigError("Segment Anything needs the Python package 'segment_anything', which is not installed: "
                          "pip install 'structseg[sam]' (or pip install segment-anything)")


def _builder(model_type: str) -> Callable[[], Any]:
    require_segment_anything()
    from segment_anything import sam_model_registry

    if model_type in EXTRA_SAM_TYPES:
        return EXTRA_SAM_TYPES[model_type]
    if model_type in sam_model_registry:
        return lambda: sam_model_registry[model_type](checkpoint=None)
    known = sorted({*sam_model_registry, *EXTRA_SAM_TYPES})
    raise ConfigError(f"unknown SAM model type {model_type!r}; choose from {', '.join(known)}")


def _missing(path: Path, model_type: str) -> WeightsUnavailableError:
    if model_type in SAM_FILES:
        name = SAM_FILES[model_type]
        return WeightsUnavailableError(
            f"SAM checkpoint {path} not found. Download {SAM_URL}{name} and put it at "
            f"{sam_dir() / name} (or set STRUCTSEG_SAM_DIR, or pass its path as the checkpoint)"
        )
    return WeightsUnavailableError(f"SAM checkpoint {path} for model type {model_type!r} not found")


def check_sam(checkpoint: str | Path | None = None, model_type: str = "vit_b") -> Path:
    """The checkpoint :func:`load_sam` would read, after checking the package, the model type
    and that the file exists; reads no weights, so commands call it before their heavy work."""
    _builder(model_type)
    path = Path(checkpoint).expanduser() if checkpoint is not None else default_checkpoint(model_type)
    if not path.is_file():
        raise _missing(path, model_type)
    return path


def load_sam(checkpoint: str | Path | None = None, model_type: str = "vit_b", device: str = "cpu") -> Any:
    """A ``segment_anything.Sam`` in eval mode with the checkpoint's weights.

    ``checkpoint=None`` looks in :func:`sam_dir`. The file is read with
    ``weights_only=True``; a missing file is a :class:`WeightsUnavailableError` naming
    the official URL, one that does not fit ``model_type`` a :class:`CheckpointError`.
    """
    import torch

    build = _builder(model_type)
    path = check_sam(checkpoint, model_type)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated download, foreign file
        raise CheckpointError(f"{path}: not a readable SAM checkpoint ({exc})") from exc
    sam = build()
    try:
        sam.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"{path}: does not fit SAM type {model_type!r} ({str(exc).splitlines()[0]}); check the model type"
        ) from exc
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return sam.to(device).eval()


def _as_hwc(image: Any, index: int) -> np.ndarray:
    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise DataError(f"image {index}: SAM needs uint8 RGB (H, W, 3) or (3, H, W), got {array.dtype} {array.shape}")
    return np.ascontiguousarray(array)


def masks_to_segments(masks: Sequence[dict[str, Any]], shape: tuple[int, int]) -> np.ndarray:
    """Segment map ``int64 (H, W)`` of SAM's mask records, ids ``0..n-1``.

    Masks are painted largest first so that small parts stay visible on top of the
    wholes that contain them; what no mask covers is split into connected components.
    """
    from scipy import ndimage

    segments = np.full(shape, -1, dtype=np.int64)
    ordered = sorted(masks, key=lambda m: -int(m["area"]))
    for i, record in enumerate(ordered):
        segments[np.asarray(record["segmentation"], dtype=bool)] = i
    uncovered = segments < 0
    if uncovered.any():
        components, count = ndimage.label(uncovered)
        segments[uncovered] = len(ordered) + components[uncovered] - 1
    _, inverse = np.unique(segments, return_inverse=True)
    return inverse.reshape(shape).astype(np.int64)


def sam_segments(
    images: Sequence[Any],
    sam: Any,
    *,
    points_per_side: int = 32,
    generator_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> list[np.ndarray]:
    """Segment maps of ``images`` from a loaded SAM's automatic mask generator."""
    import torch
    from segment_anything import SamAutomaticMaskGenerator
    from tqdm import tqdm

    generator = SamAutomaticMaskGenerator(sam, points_per_side=points_per_side, **(generator_kwargs or {}))
    out = []
    with torch.no_grad():
        for i, image in enumerate(tqdm(images, desc="SAM", unit="img", disable=not progress)):
            array = _as_hwc(image, i)
            out.append(masks_to_segments(generator.generate(array), array.shape[:2]))
    return out


def _as_labels(maps: Sequence[Any] | None, count: int, what: str) -> list[np.ndarray] | None:
    if maps is None:
        return None
    if len(maps) != count:
        raise DataError(f"{count} images but {len(maps)} {what} maps")
    return [np.asarray(m.detach().cpu() if hasattr(m, "detach") else m).astype(np.int64) for m in maps]


def sam_column(
    images: Sequence[Any],
    checkpoint: str | Path | None = None,
    model_type: str = "vit_b",
    truth: Sequence[Any] | None = None,
    *,
    prediction: Sequence[Any] | None = None,
    num_classes: int | None = None,
    ignore_index: int = 255,
    points_per_side: int = 32,
    generator_kwargs: dict[str, Any] | None = None,
    device: str = "cpu",
    sam: Any = None,
    seed: int = 0,
    progress: bool = True,
) -> list[np.ndarray]:
    """One SAM panel per image, for the last column of ``structseg compare``.

    With ``truth`` (class maps, ``ignore_index`` not voting) or else ``prediction``
    (a semantic model's class maps), each SAM segment takes the majority class and
    the result is a class map ``int64 (H, W)`` to color with the data set's palette
    (segments with no vote get ``ignore_index``). With neither, the result is an RGB
    ``uint8 (H, W, 3)`` picture of randomly colored segments. ``sam`` skips loading.
    """
    from structseg.classic.labeling import majority_labels
    from structseg.classic.render import colorize_segments

    reference = _as_labels(truth, len(images), "truth")
    if reference is None:
        reference = _as_labels(prediction, len(images), "prediction")
    if sam is None:
        sam = load_sam(checkpoint, model_type, device)
    segments = sam_segments(images, sam, points_per_side=points_per_side, generator_kwargs=generator_kwargs,
                            progress=progress)
    if reference is None:
        return [colorize_segments(s, seed) for s in segments]
    if num_classes is None:
        valid = [r[r != ignore_index] for r in reference]
        num_classes = max((int(v.max()) + 1 for v in valid if v.size), default=1)
    out = []
    for i, (seg, ref) in enumerate(zip(segments, reference)):
        if ref.shape != seg.shape:
            raise DataError(f"image {i}: reference map {ref.shape} does not match the image {seg.shape}")
        out.append(majority_labels(seg, ref, num_classes, ignore_index))
    return out
