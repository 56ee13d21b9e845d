"""Graph helpers shared by the message-passing and local-search solvers."""
from __future__ import annotations

from typing import cast

import numpy as np
import scipy.sparse as sp

from structseg.graph.grid import coloring as graph_coloring
from structseg.structured.problem import LabelingProblem


def incidences(problem: LabelingProblem) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Both directions of every edge: (node, neighbour, edge id, flipped); incidence ``k`` and ``k +- E`` are
    reverses."""
    e = problem.edges
    ids = np.arange(problem.num_edges)
    node = np.concatenate([e[:, 0], e[:, 1]])
    other = np.concatenate([e[:, 1], e[:, 0]])
    flipped = np.concatenate([np.zeros(len(e), bool), np.ones(len(e), bool)])
    return node, other, np.concatenate([ids, ids]), flipped


def scatter_matrix(rows: np.ndarray, n: int) -> sp.csr_matrix:
    """Sparse (n, len(rows)) matrix summing per-incidence vectors into their row node."""
    return sp.csr_matrix((np.ones(len(rows)), (rows, np.arange(len(rows)))), shape=(n, len(rows)))


def coloring(problem: LabelingProblem) -> list[np.ndarray]:
    """Independent sets covering all nodes (:func:`structseg.graph.coloring`; cached in ``problem.meta``, and
    ``problem.meta["colors"]`` is used when it is a valid coloring)."""
    cached = problem.meta.get("coloring")
    if cached is not None:
        return cast("list[np.ndarray]", cached)
    given = problem.meta.get("colors")
    if given is not None and not np.any(given[problem.edges[:, 0]] == given[problem.edges[:, 1]]):
        colors = given
    else:
        colors = graph_coloring(problem.num_nodes, problem.edges, problem.shape)
    sets = [np.nonzero(colors == v)[0] for v in np.unique(colors)]
    problem.meta["colors"] = colors
    problem.meta["coloring"] = sets
    return sets


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
    return cast("np.ndarray", scores + scatter_matrix(node, problem.num_nodes) @ contrib)
