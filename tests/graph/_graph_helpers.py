"""Oracles for the graph tests: exact (max-)marginals by enumeration."""
from __future__ import annotations

import itertools

import torch


def brute_force(unary: torch.Tensor, edges: torch.Tensor, pairwise: torch.Tensor):
    """Exact marginals, max-marginals (V, K) and the MAP labeling of a tiny pairwise model
    with log-potentials, by enumerating all K^V labelings."""
    v, k = unary.shape
    labelings = torch.tensor(list(itertools.product(range(k), repeat=v)))
    scores = unary[torch.arange(v), labelings].sum(1)
    for e, (a, b) in enumerate(edges.tolist()):
        scores = scores + pairwise[e, labelings[:, a], labelings[:, b]]
    probs = torch.softmax(scores, 0)
    marginals = torch.zeros(v, k, dtype=unary.dtype)
    max_marginals = torch.zeros(v, k, dtype=unary.dtype)
    for i in range(v):
        for label in range(k):
            mask = labelings[:, i] == label
            marginals[i, label] = probs[mask].sum()
            max_marginals[i, label] = scores[mask].max()
    return marginals, max_marginals, labelings[scores.argmax()]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    """Same shape and max |actual - expected| <= atol (lighter than torch.testing, which
    imports much of torch._refs on first use)."""
    assert actual.shape == expected.shape, f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}"
    diff = (actual.to(torch.float64) - expected.to(torch.float64)).abs().max().item()
    assert diff <= atol, f"max abs difference {diff:.3g} > {atol:.3g}"
