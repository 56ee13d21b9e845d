"""Iterated conditional modes: greedy coordinate ascent, one color class of the graph at a time."""
from __future__ import annotations

import time

import numpy as np

from structseg.structured.inference.base import InferenceResult, finish, register
from structseg.structured.inference.graph import coloring, incidences, local_scores
from structseg.structured.problem import LabelingProblem


def icm(problem: LabelingProblem, labels: np.ndarray | None = None, *, max_iter: int = 100,
        deadline: float | None = None) -> np.ndarray:
    """Improve ``labels`` (default: argmax of the unaries) until no single node can gain.

    Nodes of one color class share no edge, so they move together without
    breaking the monotone ascent. Returns the local optimum.
    """
    y = problem.unary.argmax(1) if labels is None else np.asarray(labels, np.int64).reshape(-1).copy()
    sets = coloring(problem)
    inc = incidences(problem)
    tol = 1e-12 * (1.0 + np.abs(problem.unary).max())
    for _ in range(max_iter):
        changed = False
        for nodes in sets:
            scores = local_scores(problem, y, inc)[nodes]
            best = scores.argmax(1)
            gain = scores[np.arange(len(nodes)), best] - scores[np.arange(len(nodes)), y[nodes]]
            move = gain > tol
            if move.any():
                y[nodes[move]] = best[move]
                changed = True
        if not changed or (deadline is not None and time.perf_counter() > deadline):
            break
    return y


@register("icm", exact=False, description="iterated conditional modes from the unary argmax (fast, weakest)")
def solve_icm(problem: LabelingProblem, *, time_limit: float | None = None, max_iter: int = 100,
              init: np.ndarray | None = None) -> InferenceResult:
    """ICM local optimum; status "approximate"."""
    started = time.perf_counter()
    deadline = None if time_limit is None else started + time_limit
    y = icm(problem, init, max_iter=max_iter, deadline=deadline)
    return finish(problem, y, "approximate", started, solver="icm")
