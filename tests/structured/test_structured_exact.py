"""Exact ILP and the LP relaxation against exhaustive enumeration on tiny grids."""
from __future__ import annotations

import numpy as np
import pytest
from _structured_oracle import brute_force, hamming_extra, random_pairwise

from structseg.graph import grid_edges
from structseg.structured.inference import infer
from structseg.structured.inference.reduce import dead_end_elimination
from structseg.structured.problem import LabelingProblem

CASES = [(kind, sign, conn) for kind in ("agreement", "full", "shared")
         for sign in ("positive", "negative", "mixed") for conn in (4, 8)]


def _problem(seed: int, kind: str, sign: str, conn: int, h: int = 2, w: int = 3, k: int = 3,
             scale: float | None = None) -> LabelingProblem:
    rng = np.random.default_rng(seed)
    edges = grid_edges(h, w, conn)
    scale = rng.uniform(0.3, 2.5) if scale is None else scale
    return LabelingProblem(rng.normal(size=(h * w, k)), edges,
                           random_pairwise(rng, kind, len(edges), k, scale, sign), kind=kind, shape=(h, w))


@pytest.mark.parametrize("kind, sign, conn", CASES)
def test_milp_and_ilp_equal_brute_force(kind: str, sign: str, conn: int) -> None:
    for seed in range(3):
        p = _problem(seed, kind, sign, conn)
        best, _, _ = brute_force(p.unary, p.edges, p.pairwise, kind)
        for solver, opts in (("milp", {}), ("ilp", {}), ("milp", {"reduce": False})):
            r = infer(p, solver, **opts)
            assert r.status == "optimal"
            assert r.score == pytest.approx(best, abs=1e-7), (solver, opts, seed)
            assert r.labels.shape == (2, 3)
            assert r.bound == pytest.approx(best, abs=1e-6)


@pytest.mark.parametrize("kind", ["agreement", "full"])
def test_loss_augmented_ilp_equals_brute_force(kind: str) -> None:
    for seed in range(3):
        p = _problem(seed, kind, "mixed", 4, h=3, w=3, k=3)
        truth = np.random.default_rng(seed + 10).integers(0, 3, size=9)
        best, _, _ = brute_force(p.unary, p.edges, p.pairwise, kind, hamming_extra(truth, 3))
        for solver in ("milp", "ilp"):
            r = infer(p, solver, loss_augment_truth=truth)
            assert r.score == pytest.approx(best, abs=1e-7)
            loss = float((r.labels.reshape(-1) != truth).sum())
            assert r.info["loss"] == loss
            assert r.info["base_score"] == pytest.approx(p.score(r.labels))


def test_ilp_scip_backend_is_exact() -> None:
    p = _problem(5, "agreement", "mixed", 8, h=3, w=3)
    best, _, _ = brute_force(p.unary, p.edges, p.pairwise, "agreement")
    assert infer(p, "ilp", backend="scip").score == pytest.approx(best, abs=1e-7)


@pytest.mark.parametrize("kind", ["agreement", "full", "shared"])
def test_dead_end_elimination_keeps_every_optimum(kind: str) -> None:
    kept_total = 0
    for seed in range(6):
        p = _problem(seed, kind, ["positive", "mixed"][seed % 2], 4, h=3, w=3, scale=0.4)
        best, _, scores = brute_force(p.unary, p.edges, p.pairwise, kind)
        domains, _ = dead_end_elimination(p)
        from _structured_oracle import all_labelings

        ys = all_labelings(9, 3)
        for y in ys[scores >= best - 1e-9]:
            assert domains[np.arange(9), y].all()
        kept_total += int(domains.sum())
    assert kept_total < 6 * 27, "weak coupling: some labels must be eliminated"


def test_lp_bound_and_integral_case() -> None:
    for seed in range(4):
        p = _problem(seed, "agreement", "positive", 4, h=3, w=3, scale=0.3)
        best, _, _ = brute_force(p.unary, p.edges, p.pairwise, "agreement")
        for backend in ("highs", "glop"):
            r = infer(p, "lp", backend=backend)
            assert r.bound >= best - 1e-7
            if r.info["integral"]:
                assert r.status == "optimal"
                assert r.score == pytest.approx(best, abs=1e-6)
                assert r.bound == pytest.approx(best, abs=1e-6)


def test_lp_fractional_triangle_rounds_to_feasible() -> None:
    # a frustrated triangle: repulsive Potts with 2 labels has no labeling without an agreeing edge
    edges = np.array([[0, 1], [1, 2], [0, 2]])
    p = LabelingProblem(np.zeros((3, 2)), edges, -np.ones((3, 2)), kind="agreement")
    best, _, _ = brute_force(p.unary, p.edges, p.pairwise, "agreement")
    r = infer(p, "lp")
    assert not r.info["integral"] and r.info["fractional"] > 0
    assert r.status == "approximate"
    assert r.bound == pytest.approx(0.0, abs=1e-7) and best == -1.0
    assert r.bound > r.score
    assert r.labels.shape == (3,) and set(r.labels.tolist()) <= {0, 1}
    assert r.score == pytest.approx(p.score(r.labels)) == pytest.approx(best)
    # the KxK form of the same problem
    full = LabelingProblem(np.zeros((3, 2)), edges, np.broadcast_to(-np.eye(2), (3, 2, 2)).copy())
    rf = infer(full, "lp")
    assert rf.bound >= best - 1e-9 and rf.score == pytest.approx(best)
