"""exact_or_fast: the proven optimum where the exact solver finishes in time, else the fast solver's labels."""
from __future__ import annotations

import numpy as np
from _structured_oracle import brute_force, random_pairwise

from structseg.graph import grid_edges
from structseg.structured.inference import infer, list_solvers
from structseg.structured.inference.base import _REGISTRY, InferenceResult, SolverSpec
from structseg.structured.problem import LabelingProblem


def _problem(seed: int) -> LabelingProblem:
    rng = np.random.default_rng(seed)
    edges = grid_edges(2, 3, 4)
    unary = rng.normal(size=(2, 3, 3))
    return LabelingProblem.grid(unary, random_pairwise(rng, "agreement", len(edges), 3, 1.0), 4, kind="agreement")


def test_returns_the_proven_optimum_and_says_whether_bp_reached_it() -> None:
    assert "exact_or_fast" in list_solvers()
    for seed in range(4):
        problem = _problem(seed)
        best, _, _ = brute_force(problem.unary, problem.edges, problem.pairwise, "agreement")
        result = infer(problem, "exact_or_fast")
        assert result.status == "optimal" and result.info["exact_optimal"]
        assert abs(result.score - best) < 1e-9
        bp = infer(problem, "bp")
        assert result.info["fast_reached_optimum"] == (abs(bp.score - best) < 1e-9)
        assert result.info["fast_gap"] >= -1e-9


def test_falls_back_to_the_fast_solver_when_the_exact_one_runs_out_of_time(monkeypatch) -> None:
    problem = _problem(7)

    def too_slow(p: LabelingProblem, *, time_limit: float | None = None) -> InferenceResult:
        return InferenceResult(np.zeros(p.num_nodes, np.int64), p.score(np.zeros(p.num_nodes, np.int64)),
                               "time_limit", None)

    monkeypatch.setitem(_REGISTRY, "slow", SolverSpec("slow", too_slow, True, "never finishes"))
    result = infer(problem, "exact_or_fast", exact="slow")
    assert not result.info["exact_optimal"] and result.status == "approximate"
    assert np.array_equal(np.asarray(result.labels).reshape(-1), np.asarray(infer(problem, "bp").labels).reshape(-1))
