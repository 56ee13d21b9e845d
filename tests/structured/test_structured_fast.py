"""Fast solvers (BP, alpha-expansion, ICM): gaps to the exact optimum, exactness on trees, batching."""
from __future__ import annotations

import numpy as np
import pytest
from _structured_oracle import brute_force, random_pairwise

from structseg.errors import SolverError
from structseg.graph import grid_edges
from structseg.structured.inference import infer, infer_batch
from structseg.structured.inference.graph import local_scores
from structseg.structured.problem import LabelingProblem

# tolerances stated in the docs: relative score gap to the exact optimum on random 10x10, K=5 Potts grids
GAP = {("bp", 0.5): 0.005, ("expansion", 0.5): 0.01, ("bp", 1.5): 0.06, ("expansion", 1.5): 0.02}


def _potts(seed: int, w: float, h: int = 10, k: int = 5) -> LabelingProblem:
    return LabelingProblem.potts(np.random.default_rng(seed).normal(size=(h, h, k)), w)


@pytest.mark.parametrize("w", [0.5, 1.5])
def test_fast_solver_gap_to_ilp(w: float) -> None:
    worst = {"bp": 0.0, "expansion": 0.0, "icm": 0.0}
    for seed in range(4):
        p = _potts(seed, w)
        opt = infer(p, "milp").score
        unary_only = p.score(p.unary.argmax(1))
        for solver in worst:
            r = infer(p, solver)
            assert r.status == "approximate"
            assert r.score <= opt + 1e-9
            assert r.score >= unary_only - 1e-9
            worst[solver] = max(worst[solver], (opt - r.score) / abs(opt))
    for solver in ("bp", "expansion"):
        assert worst[solver] <= GAP[(solver, w)], (solver, w, worst)


def _random_tree(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.array([[int(rng.integers(0, i)), i] for i in range(1, n)])


@pytest.mark.parametrize("kind", ["agreement", "full", "shared"])
def test_bp_is_exact_on_trees(kind: str) -> None:
    rng = np.random.default_rng(7)
    for _ in range(3):
        edges = _random_tree(rng, 8)
        p = LabelingProblem(rng.normal(size=(8, 3)), edges, random_pairwise(rng, kind, 7, 3, 1.5), kind=kind)
        best, _, _ = brute_force(p.unary, p.edges, p.pairwise, kind)
        r = infer(p, "bp", polish=False)
        assert r.info["converged"]
        assert r.score == pytest.approx(best, abs=1e-9)


def test_bp_exact_on_long_chain_against_milp() -> None:
    rng = np.random.default_rng(1)
    n, k = 300, 6
    edges = np.stack([np.arange(n - 1), np.arange(1, n)], 1)
    p = LabelingProblem(rng.normal(size=(n, k)), edges, rng.normal(size=(n - 1, k, k)) * 2)
    assert infer(p, "bp", polish=False).score == pytest.approx(infer(p, "milp").score, abs=1e-8)


def test_icm_reaches_a_local_optimum() -> None:
    rng = np.random.default_rng(2)
    p = LabelingProblem(rng.normal(size=(8, 8, 4)), grid_edges(8, 8, 8), rng.normal(size=(4, 4)), kind="shared")
    y = infer(p, "icm").labels.reshape(-1)
    scores = local_scores(p, y)
    assert np.all(scores[np.arange(64), y] >= scores.max(1) - 1e-9)


def test_expansion_needs_attractive_terms() -> None:
    rng = np.random.default_rng(0)
    p = LabelingProblem.potts(rng.normal(size=(4, 4, 3)), -0.5)
    with pytest.raises(SolverError, match="bp"):
        infer(p, "expansion")
    r = infer(p, "expansion", truncate=True)
    assert r.score >= p.score(p.unary.reshape(16, 3).argmax(1)) - 1e-9
    # a metric KxK table (truncated linear) passes, a non-metric one does not
    k = 4
    d = np.abs(np.arange(k)[:, None] - np.arange(k)[None, :])
    metric = LabelingProblem.grid(rng.normal(size=(4, 4, k)), -np.minimum(d, 2).astype(float), kind="shared")
    best = infer(metric, "milp").score
    assert infer(metric, "expansion").score >= best - 0.05 * abs(best)
    square = LabelingProblem.grid(rng.normal(size=(4, 4, k)), -(d.astype(float) ** 2), kind="shared")
    with pytest.raises(SolverError, match="attractive"):
        infer(square, "expansion")


@pytest.mark.parametrize("solver", ["bp", "icm", "expansion"])
def test_batched_union_matches_single_solves(solver: str) -> None:
    problems = [_potts(s, 0.5, h=6) for s in range(3)]
    truths = [np.random.default_rng(s).integers(0, 5, size=36) for s in range(3)]
    batch = infer_batch(problems, solver, loss_augment_truths=truths)
    for p, t, rb in zip(problems, truths, batch):
        single = infer(p, solver, loss_augment_truth=t)
        assert rb.labels.shape == (6, 6)
        assert rb.score == pytest.approx(single.score)
        assert rb.info["loss"] == pytest.approx(single.info["loss"])


def test_each_expansion_move_is_the_best_in_its_neighbourhood() -> None:
    from itertools import product

    from structseg.structured.inference.graphcut import _move

    rng = np.random.default_rng(4)
    for kind in ("agreement", "shared"):
        edges = grid_edges(2, 4, 8)
        pairwise = np.abs(rng.normal(size=(len(edges), 4))) if kind == "agreement" else \
            -np.minimum(np.abs(np.arange(4)[:, None] - np.arange(4)[None, :]), 2).astype(float)
        p = LabelingProblem(rng.normal(size=(8, 4)), edges, pairwise, kind=kind)
        y = rng.integers(0, 4, size=8)
        for alpha in range(4):
            best = max(p.score(np.where(np.array(s, bool), alpha, y)) for s in product((0, 1), repeat=8))
            assert p.score(_move(p, y, alpha, truncate=False)) == pytest.approx(best, abs=1e-9)
