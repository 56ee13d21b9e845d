"""Approximate marginals of a pairwise graph, by name: mean-field and loopy BP behind one registry.

Every method maps ``(unary (N, V, K), edges (E, 2), pairwise (N, E, K, K), iterations, damping)`` to beliefs
(N, V, K) that sum to one over K; the CNN-CRF's ``infer`` and its engine options pick one by name.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from structseg.errors import ConfigError, SolverError
from structseg.graph.bp import loopy_bp

__all__ = ["MarginalMethod", "graph_marginals", "graph_mean_field", "list_marginal_methods", "register_marginals"]

MarginalMethod = Callable[..., Tensor]
_METHODS: dict[str, MarginalMethod] = {}


def register_marginals(name: str) -> Callable[[MarginalMethod], MarginalMethod]:
    """Decorator: make ``fn(unary, edges, pairwise, *, iterations, damping) -> beliefs`` available as ``name``."""

    def add(fn: MarginalMethod) -> MarginalMethod:
        _METHODS[name] = fn
        return fn

    return add


def list_marginal_methods() -> list[str]:
    return list(_METHODS)


def graph_marginals(method: str, unary: Tensor, edges: Tensor, pairwise: Tensor, *, iterations: int = 10,
                    damping: float = 0.5) -> Tensor:
    """Beliefs (N, V, K) by the registered ``method``."""
    if method not in _METHODS:
        raise ConfigError(f"unknown graph inference method {method!r}; valid: {', '.join(_METHODS)}")
    return _METHODS[method](unary, edges, pairwise, iterations=iterations, damping=damping)


@register_marginals("meanfield")
def graph_mean_field(unary: Tensor, edges: Tensor, pairwise: Tensor, *, iterations: int = 10,
                     damping: float = 0.5) -> Tensor:
    """Damped parallel mean-field: each step moves Q a fraction ``1 - damping`` toward
    ``softmax(u_i + sum_j E_{Q_j}[v_ij])``."""
    if not 0.0 <= damping < 1.0:
        raise SolverError(f"damping must be in [0, 1), got {damping}")
    src, dst = edges[:, 0], edges[:, 1]
    q = torch.softmax(unary, -1)
    for _ in range(iterations):
        to_src = torch.einsum("nekl,nel->nek", pairwise, q[:, dst])
        to_dst = torch.einsum("nekl,nek->nel", pairwise, q[:, src])
        field = unary.index_add(1, src, to_src).index_add(1, dst, to_dst)
        q = damping * q + (1 - damping) * torch.softmax(field, -1)
    return q


@register_marginals("bp-sum")
def _bp_sum(unary: Tensor, edges: Tensor, pairwise: Tensor, *, iterations: int = 10, damping: float = 0.5) -> Tensor:
    """Sum-product loopy BP beliefs."""
    return loopy_bp(unary, edges, pairwise, mode="sum", iterations=iterations, damping=damping).beliefs


@register_marginals("bp-max")
def _bp_max(unary: Tensor, edges: Tensor, pairwise: Tensor, *, iterations: int = 10, damping: float = 0.5) -> Tensor:
    """Max-product loopy BP beliefs (normalized max-marginals)."""
    return loopy_bp(unary, edges, pairwise, mode="max", iterations=iterations, damping=damping).beliefs
