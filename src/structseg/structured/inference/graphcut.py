"""Alpha-expansion by graph cuts (Boykov, Veksler & Zabih 2001) with PyMaxflow.

Each move lets every node either keep its label or switch to ``alpha`` and
picks the best such labeling by one min-cut. In energy terms
(``theta = -p``) the move is exact when every edge satisfies

    theta(alpha, alpha) + theta(b, c) <= theta(b, alpha) + theta(alpha, c)   for all alpha, b, c,

i.e. the pairwise term is a metric up to constants. For the agreement form
this is exactly ``w_ij,c >= 0`` for every class (attraction only). Problems
that break it raise :class:`SolverError` unless ``truncate=True``, which
clips the offending terms (Rother et al. 2005) and keeps a move only when it
raises the true score.
"""
from __future__ import annotations

import time

import numpy as np

from structseg.errors import SolverError
from structseg.structured.inference.base import InferenceResult, finish, register
from structseg.structured.problem import LabelingProblem

_CHUNK = 1 << 22


def expansion_violation(problem: LabelingProblem) -> float:
    """Largest violation of the expansion condition over edges and label triples (0 when it holds)."""
    if problem.num_edges == 0 or problem.num_labels < 2:
        return 0.0
    if problem.kind == "agreement":
        return float(max(0.0, -problem.pairwise.min())) if problem.num_labels > 2 else _generic(problem)
    return _generic(problem)


def _generic(problem: LabelingProblem) -> float:
    k = problem.num_labels
    worst = 0.0
    step = max(1, _CHUNK // (k * k))
    for s in range(0, problem.num_edges, step):
        theta = -np.asarray(problem.edge_tables(np.arange(s, min(s + step, problem.num_edges))))
        for a in range(k):
            lam = theta[:, :, a][:, :, None] + theta[:, a, :][:, None, :] - theta - theta[:, a, a][:, None, None]
            worst = max(worst, float(-lam.min()))
    return worst


def _move(problem: LabelingProblem, y: np.ndarray, alpha: int, truncate: bool) -> np.ndarray:
    """The best labeling within one alpha-expansion of ``y``."""
    import maxflow

    n = problem.num_nodes
    e0, e1 = problem.edges[:, 0], problem.edges[:, 1]
    a = np.full(n, alpha)
    cost0 = -problem.unary[np.arange(n), y]
    cost1 = -problem.unary[:, alpha].copy()
    yi, yj = y[e0], y[e1]
    A = -problem.pair_scores(yi, yj)
    B = -problem.pair_scores(yi, a[e1])
    C = -problem.pair_scores(a[e0], yj)
    D = -problem.pair_scores(a[e0], a[e1])
    lam = B + C - A - D
    if truncate:
        lam = np.maximum(lam, 0.0)
    delta1 = cost1 - cost0 + np.bincount(e0, C - A, minlength=n) + np.bincount(e1, D - C, minlength=n)
    g = maxflow.Graph[float](n, len(e0))
    nodes = g.add_nodes(n)
    if len(e0):
        g.add_edges(nodes[e0], nodes[e1], lam, np.zeros_like(lam))
    g.add_grid_tedges(nodes, np.maximum(delta1, 0.0), np.maximum(-delta1, 0.0))
    g.maxflow()
    switch = g.get_grid_segments(nodes)
    return np.where(switch, alpha, y)


@register("expansion", exact=False,
          description="alpha-expansion graph cuts via PyMaxflow (attractive / metric pairwise only)")
def solve_expansion(problem: LabelingProblem, *, time_limit: float | None = None, max_cycles: int = 20,
                    init: np.ndarray | None = None, truncate: bool = False) -> InferenceResult:
    """Cycle over labels until no expansion raises the score; status "approximate"."""
    started = time.perf_counter()
    violation = expansion_violation(problem)
    tol = 1e-9 * (1.0 + np.abs(problem.pairwise).max()) if problem.pairwise.size else 0.0
    if violation > tol and not truncate:
        raise SolverError(
            f"'expansion' needs attractive (metric) pairwise terms; this problem violates the condition by "
            f"{violation:.3g} (negative agreement weights?). Use 'bp', 'icm', 'lp' or 'milp', or pass truncate=True"
        )
    y = problem.unary.argmax(1) if init is None else np.asarray(init, np.int64).reshape(-1).copy()
    score = problem.score(y)
    timed_out, cycles = False, 0
    for cycles in range(1, max_cycles + 1):
        improved = False
        for alpha in range(problem.num_labels):
            cand = _move(problem, y, alpha, truncate)
            s = problem.score(cand)
            if s > score + 1e-12 * (1.0 + abs(score)):
                y, score, improved = cand, s, True
            if time_limit is not None and time.perf_counter() - started > time_limit:
                timed_out = True
                break
        if not improved or timed_out:
            break
    status = "time_limit" if timed_out else "approximate"
    return finish(problem, y, status, started, solver="expansion", cycles=cycles)
