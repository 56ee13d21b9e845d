"""Loopy belief propagation on pairwise graphs, vectorised over edges and a batch.

The model is ``p(x) ∝ exp(sum_i u_i(x_i) + sum_e v_e(x_s, x_t))`` with log-potentials
(scores, higher = more likely): ``unary`` (B, V, K) and ``pairwise`` (B, E, K, K)
indexed ``[x_src, x_dst]`` for edges ``(src, dst)``. All messages are updated in
parallel ("flooding"), in log space, with damping
``m <- damping * m_old + (1 - damping) * m_new``. On a tree (and with any damping
below 1) the fixed point is exact: sum-product beliefs are the marginals,
max-product beliefs the max-marginals, whose argmax is the MAP labelling when
it is unique.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from structseg.errors import SolverError

__all__ = ["BPResult", "loopy_bp"]

Mode = Literal["sum", "max"]


@dataclass
class BPResult:
    """Log-beliefs (B, V, K) normalised to sum to one over K (for max-product:
    proportional to the max-marginals), their argmax labels (B, V), the number of
    iterations run and whether the largest message change fell below ``tol``."""

    log_beliefs: Tensor
    labels: Tensor
    iterations: int
    converged: bool

    @property
    def beliefs(self) -> Tensor:
        """Beliefs as probabilities (B, V, K)."""
        return self.log_beliefs.exp()


def _check(unary: Tensor, edges: Tensor, pairwise: Tensor) -> tuple[Tensor, Tensor, bool]:
    single = unary.dim() == 2
    if single:
        unary = unary.unsqueeze(0)
    if unary.dim() != 3:
        raise SolverError(f"unary must be (V, K) or (B, V, K), got shape {tuple(unary.shape)}")
    b, v, k = unary.shape
    if edges.dim() != 2 or edges.shape[1] != 2:
        raise SolverError(f"edges must be (E, 2) node pairs, got shape {tuple(edges.shape)}")
    if edges.numel() and (int(edges.min()) < 0 or int(edges.max()) >= v):
        raise SolverError(f"edges refer to nodes outside 0..{v - 1}")
    if edges.numel() and bool((edges[:, 0] == edges[:, 1]).any()):
        raise SolverError("edges contain a self-loop")
    if pairwise.dim() == 3:
        pairwise = pairwise.unsqueeze(0).expand(b, -1, -1, -1)
    if pairwise.shape != (b, edges.shape[0], k, k):
        raise SolverError(
            f"pairwise must be (E, K, K) or (B, E, K, K) = ({b}, {edges.shape[0]}, {k}, {k}), "
            f"got shape {tuple(pairwise.shape)}"
        )
    return unary, pairwise, single


def loopy_bp(
    unary: Tensor,
    edges: Tensor,
    pairwise: Tensor,
    *,
    mode: Mode = "sum",
    iterations: int = 50,
    damping: float = 0.5,
    tol: float = 1e-5,
) -> BPResult:
    """Sum-product (``mode="sum"``) or max-product (``"max"``) loopy BP.

    ``unary`` (V, K) or (B, V, K), ``edges`` (E, 2) long, ``pairwise`` (E, K, K) or
    (B, E, K, K); stops after ``iterations`` or when no message moves more than ``tol``.
    """
    if mode not in ("sum", "max"):
        raise SolverError(f"mode must be 'sum' or 'max', got {mode!r}")
    if not 0.0 <= damping < 1.0:
        raise SolverError(f"damping must be in [0, 1), got {damping}")
    if iterations < 0:
        raise SolverError(f"iterations must be >= 0, got {iterations}")
    unary, pairwise, single = _check(unary, edges, pairwise)
    b, _, k = unary.shape
    e = edges.shape[0]
    edges = edges.to(unary.device)
    # directed edges: 0..E-1 are src->dst, E..2E-1 dst->src; table[d] is [x_from, x_to]
    src = torch.cat([edges[:, 0], edges[:, 1]])
    dst = torch.cat([edges[:, 1], edges[:, 0]])
    reverse = torch.cat([torch.arange(e, 2 * e), torch.arange(e)]).to(unary.device)
    table = torch.cat([pairwise, pairwise.transpose(-1, -2)], 1)
    reduce = torch.logsumexp if mode == "sum" else (lambda x, dim: x.amax(dim))

    messages = unary.new_zeros(b, 2 * e, k)
    converged = False
    done = 0
    for done in range(1, iterations + 1):
        incoming = unary.index_add(1, dst, messages)
        cavity = incoming.index_select(1, src) - messages.index_select(1, reverse)
        new = reduce(cavity.unsqueeze(-1) + table, dim=2)
        new = new - reduce(new, dim=-1).unsqueeze(-1)
        if damping > 0:
            new = damping * messages + (1 - damping) * new
        change = float((new - messages).detach().abs().max()) if new.numel() else 0.0
        messages = new
        if change < tol:
            converged = True
            break
    beliefs = unary.index_add(1, dst, messages)
    log_beliefs = torch.log_softmax(beliefs, -1)
    labels = beliefs.argmax(-1)
    if single:
        log_beliefs, labels = log_beliefs[0], labels[0]
    return BPResult(log_beliefs=log_beliefs, labels=labels, iterations=done, converged=converged)
