"""Pairwise graphs on pixel / feature-cell grids: neighbourhoods, edge lists and colorings.

Nodes of an ``H x W`` grid are numbered row-major. A neighbourhood is a set of offsets ``(dy, dx)``; each
offset gives the edges ``(node, node + offset)`` whose target lies inside the grid, so every undirected
edge appears once and edges are grouped by offset (row-major within a group). The structured-SVM heads
(4-, 8-connected or range-box grids) and Lin et al.'s CNN-CRF (its "surrounding" and "above/below" boxes)
build their graphs here.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from structseg.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["Neighbourhood", "above_below_offsets", "box_offsets", "check_fits", "coloring", "grid_edges",
           "grid_edges_tensor",
           "grid_offsets", "surrounding_offsets"]

# 4, 8, a range box (ry, rx), or explicit offsets [(dy, dx), ...]
Neighbourhood = int | tuple[int, int] | Sequence[tuple[int, int]]


def box_offsets(ry: int, rx: int) -> list[tuple[int, int]]:
    """Every offset of the box ``|dy| <= ry, |dx| <= rx`` but (0, 0), one per unordered pair."""
    if ry < 0 or rx < 0 or ry + rx == 0:
        raise ConfigError(f"a range box needs ry, rx >= 0 and not both 0, got ({ry}, {rx})")
    return [(dy, dx) for dy in range(ry + 1) for dx in range(-rx, rx + 1) if dy > 0 or dx > 0]


def surrounding_offsets(radius: int) -> list[tuple[int, int]]:
    """Lin et al.'s "surrounding" relation: the (2r+1)^2 box around a node."""
    if radius < 1:
        raise ConfigError(f"surrounding radius must be >= 1, got {radius}")
    return box_offsets(radius, radius)


def above_below_offsets(below: int, across: int) -> list[tuple[int, int]]:
    """Lin et al.'s "above/below" relation: offsets with ``1 <= dy <= below`` and ``|dx| <= across`` (the source
    node is above the target)."""
    if below < 1 or across < 0:
        raise ConfigError(f"above/below box needs below >= 1 and across >= 0, got {below}, {across}")
    return [(dy, dx) for dy in range(1, below + 1) for dx in range(-across, across + 1)]


def _is_offset(value: object) -> bool:
    return (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value))


def grid_offsets(neighbourhood: Neighbourhood = 4) -> np.ndarray:
    """Offsets (M, 2) of a neighbourhood: ``4`` (right, down), ``8`` (also both diagonals), a range box
    ``(ry, rx)`` (:func:`box_offsets`) or an explicit list of ``(dy, dx)`` offsets."""
    if neighbourhood == 4:
        return np.array([(0, 1), (1, 0)], dtype=np.int64)
    if neighbourhood == 8:
        return np.array([(0, 1), (1, 0), (1, 1), (1, -1)], dtype=np.int64)
    if _is_offset(neighbourhood):
        ry, rx = (int(v) for v in neighbourhood)  # type: ignore[union-attr,arg-type]
        return np.array(box_offsets(ry, rx), dtype=np.int64)
    if isinstance(neighbourhood, (tuple, list)) and all(_is_offset(o) for o in neighbourhood):
        offsets = np.array(neighbourhood, dtype=np.int64).reshape(-1, 2)
        if (offsets == 0).all(axis=1).any():
            raise ConfigError(f"offset (0, 0) would join a node to itself: {list(map(tuple, offsets.tolist()))}")
        return offsets
    raise ConfigError(f"connectivity must be 4, 8, a range box [ry, rx] or a list of (dy, dx) offsets, "
                      f"got {neighbourhood!r}")


def grid_edges(height: int, width: int, neighbourhood: Neighbourhood = 4) -> np.ndarray:
    """Edge list (E, 2) of an ``height x width`` grid: ``(node, node + offset)`` for each offset of
    ``neighbourhood`` (in :func:`grid_offsets` order) whose target lies inside, row-major within an offset."""
    ids = np.arange(height * width, dtype=np.int64).reshape(height, width)
    chunks = []
    for dy, dx in grid_offsets(neighbourhood):
        y0, y1 = max(0, -dy), min(height, height - dy)
        x0, x1 = max(0, -dx), min(width, width - dx)
        if y1 <= y0 or x1 <= x0:
            continue
        src = ids[y0:y1, x0:x1]
        dst = ids[y0 + dy:y1 + dy, x0 + dx:x1 + dx]
        chunks.append(np.stack([src.ravel(), dst.ravel()], axis=1))
    if not chunks:
        return np.zeros((0, 2), dtype=np.int64)
    return np.concatenate(chunks, axis=0)


def check_fits(neighbourhood: Neighbourhood, height: int, width: int, setting: str) -> None:
    """A :class:`ConfigError` naming ``setting`` when ``neighbourhood`` is larger than an ``height x width`` grid: a
    range box ``(ry, rx)``, or a list of offsets (Lin et al.'s boxes), that reaches as many rows or columns as the
    grid has. 4 and 8 always fit."""
    if neighbourhood in (4, 8):
        return
    offsets = grid_offsets(neighbourhood)
    reach_y = int(np.abs(offsets[:, 0]).max()) if len(offsets) else 0
    reach_x = int(np.abs(offsets[:, 1]).max()) if len(offsets) else 0
    if reach_y >= height or reach_x >= width:
        raise ConfigError(f"{setting}: the neighbourhood reaches {reach_y} rows and {reach_x} columns, as far as or "
                          f"beyond the {height} x {width} feature grid; use a smaller range box or a larger input")


def grid_edges_tensor(height: int, width: int, neighbourhood: Neighbourhood = 4,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """:func:`grid_edges` as a long tensor on ``device``."""
    import torch

    return torch.from_numpy(grid_edges(height, width, neighbourhood)).to(device)


def coloring(num_nodes: int, edges: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A color per node (N,) such that no edge joins two nodes of one color.

    Grids (``shape`` given) get a checkerboard (4-connected) or a (ry+1) x (rx+1) tiling (8-connected
    and range boxes); any other graph gets Luby-style rounds of local priority maxima.
    """
    if shape is not None and shape[0] * shape[1] == num_nodes:
        r, c = np.divmod(np.arange(num_nodes), shape[1])
        board = (r + c) % 2
        if _valid(board, edges):
            return board
        dr = int(np.abs(r[edges[:, 0]] - r[edges[:, 1]]).max())
        dc = int(np.abs(c[edges[:, 0]] - c[edges[:, 1]]).max())
        tiles = (r % (dr + 1)) * (dc + 1) + c % (dc + 1)
        if _valid(tiles, edges):
            return tiles
    return _luby(num_nodes, edges)


def _valid(colors: np.ndarray, edges: np.ndarray) -> bool:
    return not np.any(colors[edges[:, 0]] == colors[edges[:, 1]])


def _luby(n: int, edges: np.ndarray) -> np.ndarray:
    prio = np.random.default_rng(0).permutation(n).astype(np.int64)
    colors = np.full(n, -1, np.int64)
    a = np.concatenate([edges[:, 0], edges[:, 1]])
    b = np.concatenate([edges[:, 1], edges[:, 0]])
    color = 0
    while (colors < 0).any():
        free = colors < 0
        active = free[a] & free[b]
        best = np.full(n, -1, np.int64)
        np.maximum.at(best, a[active], prio[b[active]])
        chosen = free & (prio > best)
        colors[chosen] = color
        color += 1
    return colors
