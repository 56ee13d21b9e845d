"""Grid neighbourhoods, edge lists and colorings: one implementation for the SVM heads and the CNN-CRF."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from structseg.errors import ConfigError
from structseg.graph import (
    above_below_offsets,
    box_offsets,
    coloring,
    downsample_labels,
    grid_edges,
    grid_edges_tensor,
    grid_offsets,
    surrounding_offsets,
)


def _enumerate(h: int, w: int, offsets: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(node, node + offset) by loops, grouped by offset, row-major: the order grid_edges promises."""
    return [(y * w + x, (y + dy) * w + x + dx) for dy, dx in offsets
            for y in range(h) for x in range(w) if 0 <= y + dy < h and 0 <= x + dx < w]


@pytest.mark.parametrize("neighbourhood", [4, 8, (2, 1), [(0, 1), (-1, 2), (3, -1)]])
def test_edges_follow_the_offsets_in_order(neighbourhood):
    offsets = [tuple(o) for o in grid_offsets(neighbourhood).tolist()]
    edges = grid_edges(5, 6, neighbourhood)
    assert [tuple(e) for e in edges.tolist()] == _enumerate(5, 6, offsets)
    assert torch.equal(grid_edges_tensor(5, 6, neighbourhood), torch.from_numpy(edges))


def test_named_neighbourhoods():
    assert grid_offsets(4).tolist() == [[0, 1], [1, 0]]
    assert grid_offsets(8).tolist() == [[0, 1], [1, 0], [1, 1], [1, -1]]
    assert sorted(box_offsets(1, 1)) == sorted(map(tuple, grid_offsets(8).tolist()))
    assert surrounding_offsets(2) == box_offsets(2, 2) and len(box_offsets(2, 2)) == 12
    assert above_below_offsets(3, 1) == [(dy, dx) for dy in (1, 2, 3) for dx in (-1, 0, 1)]


@pytest.mark.parametrize("bad", [6, (0, 0), (-1, 2), [(0, 0)], "4", [(1, 2, 3)]])
def test_bad_neighbourhoods_are_config_errors(bad):
    with pytest.raises(ConfigError):
        grid_edges(3, 3, bad)


@pytest.mark.parametrize("neighbourhood", [4, 8, (2, 3)])
def test_grid_colorings_are_proper_and_small(neighbourhood):
    h, w = 7, 9
    edges = grid_edges(h, w, neighbourhood)
    colors = coloring(h * w, edges, (h, w))
    assert not (colors[edges[:, 0]] == colors[edges[:, 1]]).any()
    ry, rx = {4: (1, 1), 8: (1, 1), (2, 3): (2, 3)}[neighbourhood]
    assert len(np.unique(colors)) <= (2 if neighbourhood == 4 else (ry + 1) * (rx + 1))


def test_any_graph_gets_a_proper_coloring():
    rng = np.random.default_rng(0)
    edges = np.unique(np.sort(rng.integers(0, 30, size=(80, 2)), axis=1), axis=0)
    edges = edges[edges[:, 0] != edges[:, 1]]
    colors = coloring(30, edges)
    assert not (colors[edges[:, 0]] == colors[edges[:, 1]]).any()


def test_downsampled_truth_is_the_labelled_majority_and_ignores_sparse_cells():
    target = torch.tensor([[[0, 0, 1, 1], [0, 2, 1, 1], [255, 255, 2, 2], [255, 0, 2, 2]]])
    assert downsample_labels(target, (2, 2), num_classes=3).tolist() == [[[0, 1], [255, 2]]]
    # half labelled: kept with min_valid=0.5 (the default), ignored above it
    half = torch.tensor([[[255, 255], [1, 1]]])
    assert downsample_labels(half, (1, 1), num_classes=3).tolist() == [[[1]]]
    assert downsample_labels(half, (1, 1), num_classes=3, min_valid=0.75).tolist() == [[[255]]]
    # labels outside 0..K-1 count as unlabelled
    assert downsample_labels(torch.tensor([[[7, 7], [7, 2]]]), (1, 1), num_classes=3).tolist() == [[[255]]]
    with pytest.raises(ConfigError, match="downsampling mode"):
        downsample_labels(target, (2, 2), 3, mode="mode")
