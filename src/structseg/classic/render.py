"""Pictures of segment maps: random colours per segment, overlays with boundaries, PNG files."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def random_colors(n: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct-looking random RGB colours ``uint8 (n, 3)``, reproducible by ``seed``."""
    rng = np.random.default_rng(seed)
    return rng.integers(30, 256, size=(max(n, 1), 3), dtype=np.uint8)


def colorize_segments(segments: np.ndarray, seed: int = 0) -> np.ndarray:
    """RGB picture ``uint8 (H, W, 3)`` of a segment map, one random colour per id."""
    return random_colors(int(segments.max()) + 1, seed)[segments]


def colorize_labels(labels: np.ndarray, palette: Sequence[Sequence[int]], ignore_color: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """RGB picture of a class map with a class palette; ids outside the palette get ``ignore_color``."""
    table = np.array([*palette, ignore_color], dtype=np.uint8)
    ids = np.where((labels >= 0) & (labels < len(palette)), labels, len(palette))
    return table[ids]


def segment_boundaries(segments: np.ndarray) -> np.ndarray:
    """Boolean ``(H, W)``: pixels whose right or lower neighbour lies in another segment."""
    edge = np.zeros(segments.shape, dtype=bool)
    edge[:, :-1] |= segments[:, :-1] != segments[:, 1:]
    edge[:-1, :] |= segments[:-1, :] != segments[1:, :]
    return edge


def overlay(image: np.ndarray, colours: np.ndarray, segments: np.ndarray | None = None, alpha: float = 0.5) -> np.ndarray:
    """Blend ``colours`` over ``image``; with ``segments``, also draw their boundaries in white."""
    out = ((1 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)).round().astype(np.uint8)
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
