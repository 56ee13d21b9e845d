"""Exact problem reduction before the ILP: dead-end elimination and folding of fixed nodes.

Goldstein's dead-end elimination (from protein design): label ``c`` at node
``i`` is removed when some label ``d`` beats it for *every* labeling of the
neighbours still allowed,

    u_i(d) - u_i(c) > sum_{j in N(i)} max_{y in D_j} [p_ij(c, y) - p_ij(d, y)].

Switching ``i`` from ``c`` to ``d`` then strictly raises the score, so no
optimal labeling uses ``c`` at ``i``; repeating while domains shrink keeps
every optimum. Nodes left with one label are folded into their neighbours'
unaries, so the ILP only sees the undecided part. On grids with moderate
coupling this removes most variables (see ``benchmarks/ssvm_inference.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import scipy.sparse as sp

from structseg.structured.inference.graph import incidences
from structseg.structured.problem import LabelingProblem

_CHUNK = 1 << 21  # elements of one (incidences, K, K) block


@dataclass
class Reduced:
    """What is left after reduction: ``domains`` (N, K) bool, folded unaries, free edges, constant."""

    domains: np.ndarray
    unary: np.ndarray
    free_nodes: np.ndarray
    free_edges: np.ndarray
    constant: float
    fixed_labels: np.ndarray  # (N,) label of fixed nodes, -1 for free ones
    rounds: int

    @property
    def num_free(self) -> int:
        return int(self.free_nodes.sum())


def _oriented_tables(problem: LabelingProblem, edge: np.ndarray, flipped: np.ndarray) -> np.ndarray:
    """Pairwise tables (M, K, K) with rows indexed by the incidence's own node."""
    t = problem.edge_tables(edge)
    return np.where(flipped[:, None, None], np.swapaxes(t, 1, 2), t)


def _dee_terms(problem: LabelingProblem, dom_other: np.ndarray, edge: np.ndarray, flipped: np.ndarray) -> np.ndarray:
    """max_{y in D_j} [q(c, y) - q(d, y)] for each incidence, as (M, K*K) (c major)."""
    k = problem.num_labels
    if problem.kind == "agreement":
        a = problem.pairwise[edge]
        neg = -np.inf
        take_c = np.where(dom_other, a, neg)[:, :, None]  # y = c: a_c
        take_d = np.where(dom_other, -a, neg)[:, None, :]  # y = d: -a_d
        rest = dom_other.sum(1)[:, None, None] - dom_other[:, :, None] - dom_other[:, None, :]
        zero = np.where(rest >= 1, 0.0, neg)  # another y: 0
        t = np.maximum(np.maximum(take_c, take_d), zero)
    else:
        q = _oriented_tables(problem, edge, flipped)
        t = np.empty((len(edge), k, k))
        masked = np.where(dom_other[:, None, :], 0.0, -np.inf)
        for d in range(k):
            t[:, :, d] = (q - q[:, d : d + 1, :] + masked).max(axis=2)
    diag = np.arange(k)
    t[:, diag, diag] = 0.0
    return t.reshape(len(edge), k * k)


def _attractive_agreement_round(problem: LabelingProblem, dom: np.ndarray, inc: sp.csr_matrix,
                                 other: np.ndarray, edge: np.ndarray, tol: float) -> np.ndarray:
    """One DEE round for agreement weights >= 0, in O(E K).

    With ``w >= 0`` the bound splits: ``sum_j max_y [.] = R_i(c) - F_i(d)`` where
    ``R_i(c) = sum_j w_ij,c [c in D_j]`` and ``F_i(d) = sum_{j fixed to d} w_ij,d``,
    so ``c`` dies iff ``u_i(c) + R_i(c) < max_{d != c} u_i(d) + F_i(d)``.
    """
    w = problem.pairwise[edge]
    d_other = dom[other]
    fixed_other = d_other & (d_other.sum(1, keepdims=True) == 1)
    reach = problem.unary + inc @ (w * d_other)
    floor = problem.unary + inc @ (w * fixed_other)
    rows = np.arange(len(floor))
    first = floor.argmax(1)
    rest = floor.copy()
    rest[rows, first] = -np.inf
    best_other = np.repeat(floor[rows, first][:, None], floor.shape[1], axis=1)
    best_other[rows, first] = rest.max(1)
    return cast("np.ndarray", (best_other - reach > tol) & dom)


def _generic_round(problem: LabelingProblem, dom: np.ndarray, active: np.ndarray, node: np.ndarray,
                   other: np.ndarray, edge: np.ndarray, flipped: np.ndarray, tol: float) -> np.ndarray:
    """One DEE round for any pairwise form, on the incidences of ``active`` nodes: O(E K^2) (K^3 for tables)."""
    n, k = dom.shape
    sel = np.nonzero(active[node])[0]
    nodes = np.nonzero(active)[0]
    local = np.full(n, -1, np.int64)
    local[nodes] = np.arange(len(nodes))
    inc = sp.csr_matrix((np.ones(len(sel)), (local[node[sel]], np.arange(len(sel)))), shape=(len(nodes), len(sel)))
    total = np.zeros((len(nodes), k * k))
    step = max(1, _CHUNK // (k * k))
    for s in range(0, len(sel), step):
        part = sel[s : s + step]
        total += inc[:, s : s + step] @ _dee_terms(problem, dom[other[part]], edge[part], flipped[part])
    u = problem.unary[nodes]
    margin = u[:, None, :] - u[:, :, None] - total.reshape(len(nodes), k, k)  # [i, c, d]: advantage of d over c
    margin[:, np.arange(k), np.arange(k)] = -np.inf
    dead = np.zeros_like(dom)
    dead[nodes] = (margin > tol).any(axis=2) & dom[nodes]
    return dead


def dead_end_elimination(problem: LabelingProblem, max_rounds: int = 50,
                         domains: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Domains (N, K) bool that keep every optimal labeling, and the number of rounds run."""
    n, k = problem.unary.shape
    dom = np.ones((n, k), bool) if domains is None else domains.copy()
    node, other, edge, flipped = incidences(problem)
    tol = 1e-9 * (1.0 + np.abs(problem.unary).max()
                  + (np.abs(problem.pairwise).max() if problem.pairwise.size else 0.0))
    attractive = problem.kind == "agreement" and (problem.pairwise.size == 0 or problem.pairwise.min() >= 0)
    inc = sp.csr_matrix((np.ones(len(node)), (node, np.arange(len(node)))), shape=(n, len(node)))
    adjacency = sp.csr_matrix((np.ones(len(node)), (node, other)), shape=(n, n))
    active = dom.sum(1) > 1
    rounds = 0
    for rounds in range(1, max_rounds + 1):
        if attractive:
            dead = _attractive_agreement_round(problem, dom, inc, other, edge, tol)
        else:
            dead = _generic_round(problem, dom, active, node, other, edge, flipped, tol)
        if not dead.any():
            break
        dom &= ~dead
        changed = dead.any(1).astype(np.float64)
        active = ((adjacency @ changed) > 0) & (dom.sum(1) > 1)
    return dom, rounds


def reduce_problem(problem: LabelingProblem, max_rounds: int = 50) -> Reduced:
    """Dead-end elimination, then fold nodes with one label left into their neighbours."""
    if max_rounds > 0:
        dom, rounds = dead_end_elimination(problem, max_rounds)
    else:
        dom, rounds = np.ones(problem.unary.shape, bool), 0
    n, k = problem.unary.shape
    fixed = dom.sum(1) == 1
    fixed_labels = np.where(fixed, dom.argmax(1), -1)
    unary = problem.unary.copy()
    constant = float(problem.unary[fixed, fixed_labels[fixed]].sum())
    e = problem.edges
    fi, fj = fixed[e[:, 0]], fixed[e[:, 1]]
    both = np.nonzero(fi & fj)[0]
    if len(both):
        constant += float(problem.pair_scores(fixed_labels[e[both, 0]], fixed_labels[e[both, 1]], both).sum())
    for end, other_end in ((0, 1), (1, 0)):
        ids = np.nonzero(fixed[e[:, other_end]] & ~fixed[e[:, end]])[0]
        if not len(ids):
            continue
        lab = fixed_labels[e[ids, other_end]]
        if problem.kind == "agreement":
            add = np.zeros((len(ids), k))
            add[np.arange(len(ids)), lab] = problem.pairwise[ids, lab]
        elif problem.kind == "full":
            add = problem.pairwise[ids, :, lab] if end == 0 else problem.pairwise[ids, lab, :]
        else:
            add = problem.pairwise[:, lab].T if end == 0 else problem.pairwise[lab, :]
        np.add.at(unary, e[ids, end], add)
    free_edges = np.nonzero(~fi & ~fj)[0]
    return Reduced(dom, unary, ~fixed, free_edges, constant, fixed_labels, rounds)
