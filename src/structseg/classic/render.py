"""Pictures of segment maps: random colors per segment, overlays with boundaries, PNG files (class maps are
colored by :func:`structseg.viz.masks.colorize`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def random_colors(n: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct-looking random RGB colors ``uint8 (n, 3)``, reproducible by ``seed``."""
    rng = np.random.default_rng(seed)
    return rng.integers(30, 256, size=(max(n, 1), 3), dtype=np.uint8)


def colorize_segments(segments: np.ndarray, seed: int = 0) -> np.ndarray:
    """RGB picture ``uint8 (H, W, 3)`` of a segment map, one random color per id."""
    return random_colors(int(segments.max()) + 1, seed)[segments]


def segment_boundaries(segments: np.ndarray) -> np.ndarray:
    """Boolean ``(H, W)``: pixels whose right or lower neighbour lies in another segment."""
    edge = np.zeros(segments.shape, dtype=bool)
    edge[:, :-1] |= segments[:, :-1] != segments[:, 1:]
    edge[:-1, :] |= segments[:-1, :] != segments[1:, :]
    return edge


def overlay_segments(image: np.ndarray, colors: np.ndarray, segments: np.ndarray | None = None,
                     alpha: float = 0.5) -> np.ndarray:
    """:func:`structseg.viz.masks.overlay` of ``colors`` on ``image``; with ``segments``, their boundaries in white."""
    from structseg.viz.masks import overlay

    out = overlay(image, colors, alpha)
    if segments is not None:
        out[segment_boundaries(segments)] = 255
    return out


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write an RGB ``uint8`` or a label ``uint16`` array as PNG, creating folders."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 2:
        if array.max(initial=0) > 65535:
            raise ValueError(f"{path}: ids up to {int(array.max())} do not fit a 16-bit PNG")
        Image.fromarray(array.astype(np.uint16)).save(path)
    else:
        Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(path)
    return path
