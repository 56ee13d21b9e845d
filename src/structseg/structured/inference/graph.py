"""Graph helpers shared by the message-passing and local-search solvers."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from structseg.structured.problem import LabelingProblem


def incidences(problem: LabelingProblem) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Both directions of every edge: (node, neighbour, edge id, flipped); incidence ``k`` and ``k +- E`` are reverses."""
    e = problem.edges
    ids = np.arange(problem.num_edges)
    node = np.concatenate([e[:, 0], e[:, 1]])
    other = np.concatenate([e[:, 1], e[:, 0]])
    flipped = np.concatenate([np.zeros(len(e), bool), np.ones(len(e), bool)])
    return node, other, np.concatenate([ids, ids]), flipped


def scatter_matrix(rows: np.ndarray, n: int) -> sp.csr_matrix:
    """Sparse (n, len(rows)) matrix summing per-incidence vectors into their row node."""
    return sp.csr_matrix((np.ones(len(rows)), (rows, np.arange(len(rows)))), shape=(n, len(rows)))


def _valid(colours: np.ndarray, edges: np.ndarray) -> bool:
    return not np.any(colours[edges[:, 0]] == colours[edges[:, 1]])


def colouring(problem: LabelingProblem) -> list[np.ndarray]:
    """Independent sets covering all nodes (cached in ``problem.meta``).

    Grids get a checkerboard (4-connected) or a (ry+1) x (rx+1) tiling
    (8-connected and range boxes); any other graph gets Luby-style rounds of
    local priority maxima.
    """
    cached = problem.meta.get("colouring")
    if cached is not None:
        return cached
    n, edges = problem.num_nodes, problem.edges
    colours = None
    if "colours" in problem.meta and _valid(problem.meta["colours"], edges):
        colours = problem.meta["colours"]
    elif problem.shape is not None:
        h, w = problem.shape
        r, c = np.divmod(np.arange(n), w)
        board = (r + c) % 2
        if _valid(board, edges):
            colours = board
        elif len(edges):
            dr = np.abs(r[edges[:, 0]] - r[edges[:, 1]]).max()
            dc = np.abs(c[edges[:, 0]] - c[edges[:, 1]]).max()
            tiles = (r % (dr + 1)) * (dc + 1) + c % (dc + 1)
            if _valid(tiles, edges):
                colours = tiles
    if colours is None:
        colours = _luby(n, edges)
    sets = [np.nonzero(colours == v)[0] for v in np.unique(colours)]
    problem.meta["colours"] = colours
    problem.meta["colouring"] = sets
    return sets


def _luby(n: int, edges: np.ndarray) -> np.ndarray:
    prio = np.random.default_rng(0).permutation(n).astype(np.int64)
    colours = np.full(n, -1, np.int64)
    a = np.concatenate([edges[:, 0], edges[:, 1]])
    b = np.concatenate([edges[:, 1], edges[:, 0]])
    colour = 0
    while (colours < 0).any():
        free = colours < 0
        active = free[a] & free[b]
        best = np.full(n, -1, np.int64)
        np.maximum.at(best, a[active], prio[b[active]])
        chosen = free & (prio > best)
        colours[chosen] = colour
        colour += 1
    return colours


def local_scores(problem: LabelingProblem, labels: np.ndarray, inc: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
    """L[i, c] = u_i(c) + sum_j p_ij(c, y_j): the score of each label at each node, neighbours fixed."""
    node, other, edge, flipped = incidences(problem) if inc is None else inc
    scores = problem.unary.copy()
    if not len(node):
        return scores
    yj = labels[other]
    if problem.kind == "agreement":
        np.add.at(scores, (node, yj), problem.pairwise[edge, yj])
        return scores
    if problem.kind == "full":
        p = problem.pairwise
        contrib = np.where(flipped[:, None], p[edge, yj, :], p[edge, :, yj])
    else:
        p = problem.pairwise
        contrib = np.where(flipped[:, None], p[yj, :], p[:, yj].T)
    return scores + scatter_matrix(node, problem.num_nodes) @ contrib
