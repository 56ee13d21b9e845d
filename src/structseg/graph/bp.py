"""Loopy belief propagation on pairwise graphs, in torch, batched: the one BP of structseg.

The model is ``p(x) ∝ exp(sum_i u_i(x_i) + sum_e v_e(x_s, x_t))`` with log-potentials (scores, higher = more
likely): ``unary`` (B, V, K) and per edge ``(src, dst)`` either a table ``pairwise`` (B, E, K, K) indexed
``[x_src, x_dst]``, or ``agreement`` weights (B, E, K): ``v_e(a, b) = w_e[a]`` when ``a == b``, else 0
(Potts-like; messages then cost O(K) instead of O(K^2)). Messages live in log space on both directions of every edge.

Schedules: "flooding" recomputes every message at once; with ``colors`` (a color per node such that no
edge joins two nodes of one color, :func:`structseg.graph.grid.coloring`) the messages leaving one color
class are recomputed at a time from the current ones, a sequential (Gauss-Seidel) schedule that converges
far better on loopy grids. ``damping`` mixes in the old message. On a tree the fixed point is exact:
sum-product beliefs are the marginals, max-product beliefs the max-marginals, whose argmax is the MAP
labeling when it is unique.

:func:`loopy_bp` runs to convergence; :class:`LoopyBP` exposes the sweeps for callers that decode as they go
(the structured ``bp`` solver keeps the best labeling seen).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from structseg.errors import SolverError

__all__ = ["BPResult", "LoopyBP", "loopy_bp"]

Mode = Literal["sum", "max"]


@dataclass
class BPResult:
    """Log-beliefs (B, V, K) normalized over K (for max-product: proportional to the max-marginals), their
    argmax labels (B, V), the sweeps run and whether the largest message change fell below ``tol``."""

    log_beliefs: Tensor
    labels: Tensor
    iterations: int
    converged: bool

    @property
    def beliefs(self) -> Tensor:
        """Beliefs as probabilities (B, V, K)."""
        return self.log_beliefs.exp()


class LoopyBP:
    """The message state of loopy BP on one graph for a batch of potentials.

    ``unary`` (V, K) or (B, V, K); ``edges`` (E, 2) long; either ``pairwise`` tables (E, K, K) / (B, E, K, K)
    or ``agreement`` weights (E, K) / (B, E, K); ``colors`` (V,) for the color-sequential schedule, None for
    flooding. ``sweep()`` updates every message once and returns the largest change; ``beliefs()`` are the
    unnormalized log-beliefs (B, V, K).
    """

    def __init__(self, unary: Tensor, edges: Tensor, pairwise: Tensor | None = None, *,
                 agreement: Tensor | None = None, mode: Mode = "sum", damping: float = 0.5,
                 colors: Tensor | np.ndarray | None = None) -> None:
        if mode not in ("sum", "max"):
            raise SolverError(f"mode must be 'sum' or 'max', got {mode!r}")
        if not 0.0 <= damping < 1.0:
            raise SolverError(f"damping must be in [0, 1), got {damping}")
        self.single = unary.dim() == 2
        self.unary, pairwise, self.agreement = _check(unary, edges, pairwise, agreement)
        self.mode, self.damping = mode, damping
        device = self.unary.device
        edges = edges.to(device)
        e = edges.shape[0]
        # directed messages: 0..E-1 are src->dst, E..2E-1 dst->src; tables indexed [x_from, x_to]
        self.src = torch.cat([edges[:, 0], edges[:, 1]])
        self.dst = torch.cat([edges[:, 1], edges[:, 0]])
        self.reverse = torch.cat([torch.arange(e, 2 * e), torch.arange(e)]).to(device)
        flipped = pairwise if self.agreement else pairwise.transpose(-1, -2)
        self.table = torch.cat([pairwise, flipped], 1)
        b, _, k = self.unary.shape
        self.messages = self.unary.new_zeros(b, 2 * e, k)
        if colors is None:
            self.blocks: list[Tensor | None] = [None]
        else:
            color = torch.as_tensor(np.asarray(colors), device=device)[self.src]
            self.blocks = [torch.nonzero(color == c).flatten() for c in torch.unique(color)]

    def _update(self, cavity: Tensor, table: Tensor) -> Tensor:
        """New (normalized) messages from cavity scores (B, M, K) of their source nodes."""
        if self.agreement:
            if self.mode == "max":
                top2 = cavity.topk(min(2, cavity.shape[-1]), dim=-1)
                best = top2.values[..., :1]
                second = top2.values[..., -1:] if cavity.shape[-1] > 1 else torch.full_like(best, -torch.inf)
                is_best = torch.zeros_like(cavity, dtype=torch.bool).scatter_(-1, top2.indices[..., :1], True)
                others = torch.where(is_best, second, best)  # max over a != b
                new = torch.maximum(others, cavity + table)
            else:
                lse = torch.logsumexp(cavity, -1, keepdim=True)
                term = (cavity - lse).exp() * torch.expm1(table)
                new = lse + torch.log1p(term.clamp_min(-1 + 1e-12))
        elif self.mode == "max":
            new = (cavity.unsqueeze(-1) + table).amax(2)
        else:
            new = torch.logsumexp(cavity.unsqueeze(-1) + table, 2)
        norm = new.amax(-1, keepdim=True) if self.mode == "max" else torch.logsumexp(new, -1, keepdim=True)
        return new - norm

    def sweep(self) -> float:
        """Recompute every message once (all together, or color class by color class)."""
        change = 0.0
        for sel in self.blocks:
            incoming = self.unary.index_add(1, self.dst, self.messages)
            if sel is None:
                cavity = incoming.index_select(1, self.src) - self.messages.index_select(1, self.reverse)
                table, old = self.table, self.messages
            else:
                cavity = incoming.index_select(1, self.src[sel]) - self.messages.index_select(1, self.reverse[sel])
                table, old = self.table.index_select(1, sel), self.messages.index_select(1, sel)
            new = self._update(cavity, table)
            if self.damping > 0:
                new = self.damping * old + (1 - self.damping) * new
            if new.numel():
                change = max(change, float((new - old).detach().abs().max()))
            if sel is None:
                self.messages = new
            else:
                self.messages = self.messages.index_copy(1, sel, new)
        return change

    def beliefs(self) -> Tensor:
        """Unnormalized log-beliefs (B, V, K): unary plus incoming messages."""
        return self.unary.index_add(1, self.dst, self.messages)

    def result(self, iterations: int, converged: bool) -> BPResult:
        beliefs = self.beliefs()
        log_beliefs, labels = torch.log_softmax(beliefs, -1), beliefs.argmax(-1)
        if self.single:
            log_beliefs, labels = log_beliefs[0], labels[0]
        return BPResult(log_beliefs=log_beliefs, labels=labels, iterations=iterations, converged=converged)


def _check(unary: Tensor, edges: Tensor, pairwise: Tensor | None,
           agreement: Tensor | None) -> tuple[Tensor, Tensor, bool]:
    if unary.dim() == 2:
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
    e = edges.shape[0]
    if (pairwise is None) == (agreement is None):
        raise SolverError("give either pairwise tables or agreement weights")
    if agreement is not None:
        if agreement.dim() == 2:
            agreement = agreement.unsqueeze(0).expand(b, -1, -1)
        if agreement.shape != (b, e, k):
            raise SolverError(f"agreement weights must be (E, K) or (B, E, K) = ({b}, {e}, {k}), "
                              f"got shape {tuple(agreement.shape)}")
        return unary, agreement, True
    assert pairwise is not None
    if pairwise.dim() == 3:
        pairwise = pairwise.unsqueeze(0).expand(b, -1, -1, -1)
    if pairwise.shape != (b, e, k, k):
        raise SolverError(f"pairwise must be (E, K, K) or (B, E, K, K) = ({b}, {e}, {k}, {k}), "
                          f"got shape {tuple(pairwise.shape)}")
    return unary, pairwise, False


def loopy_bp(
    unary: Tensor,
    edges: Tensor,
    pairwise: Tensor | None = None,
    *,
    agreement: Tensor | None = None,
    mode: Mode = "sum",
    iterations: int = 50,
    damping: float = 0.5,
    tol: float = 1e-5,
    colors: Tensor | np.ndarray | None = None,
) -> BPResult:
    """Sum-product (``mode="sum"``) or max-product (``"max"``) loopy BP (see :class:`LoopyBP` for the
    shapes); stops after ``iterations`` sweeps or when no message moves more than ``tol``."""
    if iterations < 0:
        raise SolverError(f"iterations must be >= 0, got {iterations}")
    bp = LoopyBP(unary, edges, pairwise, agreement=agreement, mode=mode, damping=damping, colors=colors)
    converged, done = False, 0
    for done in range(1, iterations + 1):
        if bp.sweep() < tol:
            converged = True
            break
    return bp.result(done, converged)
