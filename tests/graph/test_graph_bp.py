"""Loopy BP: exact on trees (against enumeration), sensible on loops, clear errors."""
from __future__ import annotations

import pytest
import torch
from _graph_helpers import assert_close, brute_force

from structseg.errors import SolverError
from structseg.graph import loopy_bp

TREE = torch.tensor([[0, 1], [1, 2], [1, 3], [3, 4], [5, 0], [4, 6]])  # 7 nodes, branching
CHAIN = torch.tensor([[i, i + 1] for i in range(5)])


def random_model(edges: torch.Tensor, k: int, seed: int, coupling: float = 1.5):
    g = torch.Generator().manual_seed(seed)
    v = int(edges.max()) + 1
    unary = torch.randn(v, k, generator=g, dtype=torch.float64)
    pairwise = coupling * torch.randn(edges.shape[0], k, k, generator=g, dtype=torch.float64)
    return unary, pairwise


@pytest.mark.parametrize("edges", [TREE, CHAIN], ids=["tree", "chain"])
@pytest.mark.parametrize("damping", [0.0, 0.5])
def test_sum_product_marginals_are_exact_on_trees(edges, damping):
    unary, pairwise = random_model(edges, 3, seed=1)
    marginals, _, _ = brute_force(unary, edges, pairwise)
    result = loopy_bp(unary, edges, pairwise, mode="sum", damping=damping, iterations=300, tol=1e-12)
    assert result.converged
    assert_close(result.beliefs, marginals, atol=1e-9)


@pytest.mark.parametrize("edges", [TREE, CHAIN], ids=["tree", "chain"])
def test_max_product_gives_max_marginals_and_map_on_trees(edges):
    unary, pairwise = random_model(edges, 3, seed=2)
    _, max_marginals, best = brute_force(unary, edges, pairwise)
    result = loopy_bp(unary, edges, pairwise, mode="max", damping=0.3, iterations=300, tol=1e-12)
    assert_close(result.log_beliefs, torch.log_softmax(max_marginals, 1), atol=1e-9)
    assert torch.equal(result.labels, best)


def test_flooding_schedule_needs_only_the_diameter_undamped():
    unary, pairwise = random_model(CHAIN, 2, seed=3)
    result = loopy_bp(unary, CHAIN, pairwise, damping=0.0, iterations=100, tol=1e-12)
    assert result.iterations <= CHAIN.shape[0] + 1  # messages settle after the diameter, then one check


def test_batched_problems_are_independent():
    unary_a, pairwise_a = random_model(TREE, 3, seed=4)
    unary_b, pairwise_b = random_model(TREE, 3, seed=5)
    result = loopy_bp(torch.stack([unary_a, unary_b]), TREE, torch.stack([pairwise_a, pairwise_b]), iterations=200,
                      tol=1e-12)
    assert_close(result.beliefs[1], brute_force(unary_b, TREE, pairwise_b)[0], atol=1e-9)
    assert result.beliefs.shape == (2, 7, 3)


def test_loopy_grid_is_close_for_weak_coupling():
    """On a 3x3 grid (loops) BP is approximate; with weak coupling it is close."""
    edges = torch.tensor([[r * 3 + c, r * 3 + c + 1] for r in range(3) for c in range(2)]
                         + [[r * 3 + c, (r + 1) * 3 + c] for r in range(2) for c in range(3)])
    unary, pairwise = random_model(edges, 2, seed=6, coupling=0.3)
    marginals, _, _ = brute_force(unary, edges, pairwise)
    result = loopy_bp(unary, edges, pairwise, iterations=200)
    assert result.converged
    assert_close(result.beliefs, marginals, atol=0.02)
    assert float((result.beliefs - marginals).abs().max()) > 1e-6  # and genuinely approximate


def test_bad_input_is_rejected():
    unary, pairwise = random_model(CHAIN, 2, seed=7)
    with pytest.raises(SolverError, match="outside"):
        loopy_bp(unary, CHAIN + 10, pairwise)
    with pytest.raises(SolverError, match="pairwise must be"):
        loopy_bp(unary, CHAIN, pairwise[:, :1])
    with pytest.raises(SolverError, match="self-loop"):
        loopy_bp(unary, torch.tensor([[1, 1]]), pairwise[:1])
    with pytest.raises(SolverError, match="damping"):
        loopy_bp(unary, CHAIN, pairwise, damping=1.0)
    with pytest.raises(SolverError, match="mode"):
        loopy_bp(unary, CHAIN, pairwise, mode="mean")


def _agreement_tables(weights: torch.Tensor) -> torch.Tensor:
    """(E, K) agreement weights as the equivalent (E, K, K) tables: w on the diagonal, 0 elsewhere."""
    return torch.diag_embed(weights)


@pytest.mark.parametrize("mode", ["sum", "max"])
def test_agreement_weights_equal_their_diagonal_tables(mode):
    """The O(K) agreement messages give what the K x K tables give, repulsive weights included; on a tree both
    equal enumeration."""
    unary, _ = random_model(TREE, 4, seed=8)
    weights = 1.5 * torch.randn(TREE.shape[0], 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    assert (weights < 0).any() and (weights > 0).any()
    tables = _agreement_tables(weights)
    fast = loopy_bp(unary, TREE, agreement=weights, mode=mode, iterations=300, tol=1e-12)
    slow = loopy_bp(unary, TREE, tables, mode=mode, iterations=300, tol=1e-12)
    assert_close(fast.log_beliefs, slow.log_beliefs, atol=1e-9)
    marginals, max_marginals, best = brute_force(unary, TREE, tables)
    expected = marginals.log() if mode == "sum" else torch.log_softmax(max_marginals, 1)
    assert_close(fast.log_beliefs, expected, atol=1e-9)
    if mode == "max":
        assert torch.equal(fast.labels, best)


@pytest.mark.parametrize("mode", ["sum", "max"])
def test_color_sequential_schedule_reaches_the_same_fixed_point(mode):
    """With a proper coloring the sequential schedule converges to the exact (max-)marginals on a tree, in no
    more sweeps than flooding."""
    from structseg.graph import coloring

    unary, pairwise = random_model(CHAIN, 3, seed=10)
    colors = coloring(unary.shape[0], CHAIN.numpy())
    assert not (colors[CHAIN[:, 0]] == colors[CHAIN[:, 1]]).any()
    seq = loopy_bp(unary, CHAIN, pairwise, mode=mode, damping=0.0, iterations=100, tol=1e-12, colors=colors)
    flood = loopy_bp(unary, CHAIN, pairwise, mode=mode, damping=0.0, iterations=100, tol=1e-12)
    assert seq.converged and flood.converged
    assert_close(seq.log_beliefs, flood.log_beliefs, atol=1e-9)
    assert seq.iterations <= flood.iterations


def test_potentials_are_given_one_way():
    unary, pairwise = random_model(CHAIN, 2, seed=11)
    with pytest.raises(SolverError, match="either"):
        loopy_bp(unary, CHAIN, pairwise, agreement=pairwise[..., 0])
    with pytest.raises(SolverError, match="either"):
        loopy_bp(unary, CHAIN)
    with pytest.raises(SolverError, match="agreement weights must be"):
        loopy_bp(unary, CHAIN, agreement=pairwise[:, :, 0][:, :1])
