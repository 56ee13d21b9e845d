"""LabelingProblem: edges, scores and loss augmentation against explicit loops."""
from __future__ import annotations

import numpy as np
import pytest
from _structured_oracle import loop_score, random_pairwise

from structseg.errors import ConfigError, SolverError
from structseg.graph import grid_edges
from structseg.structured.problem import LabelingProblem, hamming_loss


def _pairs_within(h: int, w: int, ry: int, rx: int) -> set[frozenset[int]]:
    out = set()
    for r1 in range(h):
        for c1 in range(w):
            for r2 in range(h):
                for c2 in range(w):
                    if (r1, c1) != (r2, c2) and abs(r1 - r2) <= ry and abs(c1 - c2) <= rx:
                        out.add(frozenset((r1 * w + c1, r2 * w + c2)))
    return out


@pytest.mark.parametrize("conn, ry, rx", [(4, None, None), (8, 1, 1), ((2, 1), 2, 1), ((1, 3), 1, 3)])
def test_grid_edges_match_enumeration(conn, ry, rx) -> None:
    h, w = 4, 5
    edges = grid_edges(h, w, conn)
    got = [frozenset(map(int, e)) for e in edges]
    assert len(got) == len(set(got)), "each undirected edge once"
    if conn == 4:
        expected = {p for p in _pairs_within(h, w, 1, 1) if len(p) == 2 and
                    sum(abs(a - b) for a, b in zip(*[divmod(v, w) for v in p])) == 1}
    else:
        expected = _pairs_within(h, w, ry, rx)
    assert set(got) == expected


@pytest.mark.parametrize("kind", ["agreement", "full", "shared"])
def test_score_matches_loops(kind: str) -> None:
    rng = np.random.default_rng(3)
    h, w, k = 3, 4, 4
    edges = grid_edges(h, w, 8)
    unary = rng.normal(size=(h * w, k))
    pairwise = random_pairwise(rng, kind, len(edges), k, 1.0)
    problem = LabelingProblem(unary, edges, pairwise, kind=kind, shape=(h, w))
    for _ in range(5):
        y = rng.integers(0, k, size=h * w)
        assert problem.score(y) == pytest.approx(loop_score(unary, edges, pairwise, kind, y))
        assert problem.score(y.reshape(h, w)) == pytest.approx(-problem.energy(y))
    best = max(problem.score(rng.integers(0, k, size=h * w)) for _ in range(50))
    assert problem.score_bound() >= best


def test_potts_builder_and_tensor_input() -> None:
    torch = pytest.importorskip("torch")
    unary = torch.randn(3, 3, 2)
    problem = LabelingProblem.potts(unary, 0.7)
    assert problem.kind == "agreement" and problem.shape == (3, 3)
    assert problem.num_edges == 12
    y = np.zeros(9, dtype=np.int64)
    assert problem.score(y) == pytest.approx(float(unary[..., 0].sum()) + 12 * 0.7)


def test_with_loss_adds_weighted_hamming() -> None:
    rng = np.random.default_rng(0)
    n, k = 6, 3
    edges = grid_edges(2, 3, 4)
    problem = LabelingProblem(rng.normal(size=(n, k)), edges, rng.normal(size=(len(edges), k)))
    truth = np.array([0, 1, 2, 255, 1, 0])
    weights = np.array([1.0, 2.0, 0.5])
    aug = problem.with_loss(truth, class_weights=weights, ignore_index=255, normalize=True)
    counted = [i for i in range(n) if truth[i] != 255]
    for _ in range(10):
        y = rng.integers(0, k, size=n)
        loss = sum(weights[truth[i]] for i in counted if y[i] != truth[i]) / len(counted)
        assert aug.score(y) == pytest.approx(problem.score(y) + loss)
        assert hamming_loss(y, truth, k, class_weights=weights, ignore_index=255, normalize=True) == pytest.approx(loss)


def test_bad_inputs_raise() -> None:
    edges = grid_edges(1, 4, 4)  # 3 edges
    with pytest.raises(SolverError, match="ambiguous"):
        LabelingProblem(np.zeros((4, 3)), edges, np.zeros((3, 3)))
    assert LabelingProblem(np.zeros((4, 3)), edges, np.zeros((3, 3)), kind="shared").kind == "shared"
    with pytest.raises(SolverError, match="shape"):
        LabelingProblem(np.zeros((4, 3)), edges, np.zeros((5, 3)), kind="agreement")
    with pytest.raises(SolverError, match="outside"):
        LabelingProblem(np.zeros((4, 3)), np.array([[0, 4]]), np.zeros((1, 3)))
    with pytest.raises(ConfigError, match="connectivity"):
        grid_edges(3, 3, 6)
    problem = LabelingProblem(np.zeros((4, 3)), edges, np.zeros((3, 3)), kind="agreement")
    with pytest.raises(SolverError, match="labels"):
        problem.score(np.array([0, 1, 2, 3]))
