"""Pairwise labeling problems on grids (and any graph), stored as arrays.

Convention: every problem is a **maximisation** of the score

    S(y) = sum_i u_i(y_i) + sum_{(i,j) in edges} p_ij(y_i, y_j),

and ``energy(y) = -S(y)``. Solvers return the labeling of highest score; an
"energy gap" is measured on the negated score.

The pairwise term comes in three forms (``kind``):

- ``"agreement"`` (E, K): ``p_ij(a, b) = w_ij,a`` if ``a == b`` else 0 - the
  per-class agreement reward of a Potts-like model (``w_ij,c`` is the weight of
  the ILP's ``y_ij,c`` variable). Weights may be negative (repulsion).
- ``"full"`` (E, K, K): ``p_ij(a, b) = P[e, a, b]``, an arbitrary table per edge,
  indexed (label of ``edges[e, 0]``, label of ``edges[e, 1]``).
- ``"shared"`` (K, K): one table for every edge.

Each undirected edge is listed once. Nodes are numbered row-major over an
``(H, W)`` grid when the problem comes from an image (``shape`` is then set).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, cast

import numpy as np

from structseg.errors import SolverError
from structseg.graph.grid import grid_edges

PAIRWISE_KINDS = ("agreement", "full", "shared")


def _as_numpy(x: Any, dtype: Any) -> np.ndarray:
    """Turn a numpy array or (detached) torch tensor into a numpy array of ``dtype``."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=dtype))


@dataclass
class LabelingProblem:
    """A pairwise labeling problem: unary (N, K), edges (E, 2), pairwise of one ``kind``.

    Build one with :meth:`grid` or :meth:`potts`, or directly; torch tensors are
    detached and copied to float64 numpy arrays.
    """

    unary: np.ndarray
    edges: np.ndarray
    pairwise: np.ndarray
    kind: str | None = None
    shape: tuple[int, int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.unary = _as_numpy(self.unary, np.float64)
        if self.unary.ndim == 3:
            h, w, k = self.unary.shape
            if self.shape is None:
                self.shape = (h, w)
            self.unary = self.unary.reshape(h * w, k)
        if self.unary.ndim != 2:
            raise SolverError(f"unary must be (N, K) or (H, W, K), got shape {tuple(self.unary.shape)}")
        n, k = self.unary.shape
        self.edges = _as_numpy(self.edges, np.int64).reshape(-1, 2)
        self.pairwise = _as_numpy(self.pairwise, np.float64)
        e = len(self.edges)
        if e and (self.edges.min() < 0 or self.edges.max() >= n):
            raise SolverError(f"edges reference nodes outside 0..{n - 1}")
        if e and np.any(self.edges[:, 0] == self.edges[:, 1]):
            raise SolverError("edges contain self-loops (i, i)")
        self.kind = self._infer_kind(self.kind, self.pairwise.shape, e, k)
        expected = {"agreement": (e, k), "full": (e, k, k), "shared": (k, k)}[self.kind]
        if self.pairwise.shape != expected:
            raise SolverError(
                f"pairwise of kind {self.kind!r} must have shape {expected}, got {tuple(self.pairwise.shape)}"
            )
        if self.shape is not None and self.shape[0] * self.shape[1] != n:
            raise SolverError(f"shape {self.shape} does not match {n} nodes")
        if not (np.all(np.isfinite(self.unary)) and np.all(np.isfinite(self.pairwise))):
            raise SolverError("unary and pairwise scores must be finite")

    @staticmethod
    def _infer_kind(kind: str | None, shape: tuple[int, ...], e: int, k: int) -> str:
        if kind is not None:
            if kind not in PAIRWISE_KINDS:
                raise SolverError(f"unknown pairwise kind {kind!r}; valid: {', '.join(PAIRWISE_KINDS)}")
            return kind
        if len(shape) == 3:
            return "full"
        if len(shape) == 2:
            if shape == (e, k) and shape == (k, k):
                raise SolverError(f"pairwise shape {shape} is ambiguous (E == K): pass kind='agreement' or 'shared'")
            if shape == (e, k):
                return "agreement"
            if shape == (k, k):
                return "shared"
        raise SolverError(f"pairwise must be (E, K), (E, K, K) or (K, K) with E={e}, K={k}; got {shape}")

    # ------------------------------------------------------------------ builders
    @classmethod
    def grid(
        cls,
        unary: Any,
        pairwise: Any,
        connectivity: int | tuple[int, int] = 4,
        kind: str | None = None,
    ) -> LabelingProblem:
        """A problem on an (H, W) grid from unary (H, W, K); pairwise must match ``grid_edges``' order."""
        u = _as_numpy(unary, np.float64)
        if u.ndim != 3:
            raise SolverError(f"grid unary must be (H, W, K), got shape {tuple(u.shape)}")
        edges = grid_edges(u.shape[0], u.shape[1], connectivity)
        return cls(u, edges, pairwise, kind=kind)

    @classmethod
    def potts(
        cls,
        unary: Any,
        weight: float | Any,
        connectivity: int | tuple[int, int] = 4,
    ) -> LabelingProblem:
        """Potts-like agreement problem on a grid: reward ``weight`` (scalar or per class (K,)) for equal neighbours."""
        u = _as_numpy(unary, np.float64)
        if u.ndim != 3:
            raise SolverError(f"grid unary must be (H, W, K), got shape {tuple(u.shape)}")
        edges = grid_edges(u.shape[0], u.shape[1], connectivity)
        w = np.broadcast_to(_as_numpy(weight, np.float64), (len(edges), u.shape[2])).copy()
        return cls(u, edges, w, kind="agreement")

    # ------------------------------------------------------------------ sizes
    @property
    def num_nodes(self) -> int:
        return int(self.unary.shape[0])

    @property
    def num_labels(self) -> int:
        return int(self.unary.shape[1])

    @property
    def num_edges(self) -> int:
        return int(self.edges.shape[0])

    # ------------------------------------------------------------------ scores
    def edge_tables(self, index: np.ndarray | slice | None = None) -> np.ndarray:
        """Pairwise tables (E', K, K) for the selected edges (all by default); memory E'*K*K."""
        sel = slice(None) if index is None else index
        if self.kind == "full":
            return self.pairwise[sel]
        if self.kind == "shared":
            count = len(self.edges[sel])
            return np.broadcast_to(self.pairwise, (count, self.num_labels, self.num_labels))
        w = self.pairwise[sel]
        tables = np.zeros(w.shape + (w.shape[-1],), dtype=np.float64)
        diag = np.arange(self.num_labels)
        tables[:, diag, diag] = w
        return tables

    def pair_scores(self, labels_i: np.ndarray, labels_j: np.ndarray, edge_ids: np.ndarray | None = None) -> np.ndarray:
        """``p_e(labels_i, labels_j)`` for edges ``edge_ids`` (all by default), vectorised."""
        e = np.arange(self.num_edges) if edge_ids is None else edge_ids
        if self.kind == "agreement":
            return np.where(labels_i == labels_j, self.pairwise[e, labels_i], 0.0)
        if self.kind == "full":
            return cast("np.ndarray", self.pairwise[e, labels_i, labels_j])
        return cast("np.ndarray", self.pairwise[labels_i, labels_j])

    def _check_labels(self, labels: Any) -> np.ndarray:
        y = _as_numpy(labels, np.int64).reshape(-1)
        if y.shape[0] != self.num_nodes:
            raise SolverError(f"labeling has {y.shape[0]} entries, problem has {self.num_nodes} nodes")
        if y.size and (y.min() < 0 or y.max() >= self.num_labels):
            raise SolverError(f"labels must lie in 0..{self.num_labels - 1}")
        return y

    def score(self, labels: Any) -> float:
        """S(y) for a labeling (N,) or (H, W); higher is better."""
        y = self._check_labels(labels)
        unary = self.unary[np.arange(self.num_nodes), y].sum()
        pair = self.pair_scores(y[self.edges[:, 0]], y[self.edges[:, 1]]).sum() if self.num_edges else 0.0
        return float(unary + pair)

    def energy(self, labels: Any) -> float:
        """E(y) = -S(y)."""
        return -self.score(labels)

    def score_bound(self) -> float:
        """A trivial upper bound on max S: each term at its own maximum."""
        pmax = 0.0
        if self.num_edges and self.kind is not None:
            pmax = {
                "agreement": lambda: np.maximum(self.pairwise.max(axis=1),
                                                0.0 if self.num_labels > 1 else -np.inf).sum(),
                "full": lambda: self.pairwise.reshape(self.num_edges, -1).max(axis=1).sum(),
                "shared": lambda: self.num_edges * self.pairwise.max(),
            }[self.kind]()
        return float(self.unary.max(axis=1).sum() + pmax)

    # ------------------------------------------------------------------ loss augmentation
    def with_loss(
        self,
        truth: Any,
        *,
        class_weights: Any | None = None,
        normalize: bool = False,
        ignore_index: int | None = None,
    ) -> LabelingProblem:
        """The loss-augmented problem: unary += Delta_i(c) = w_{y*_i} [c != y*_i] (/ #counted nodes if ``normalize``).

        Nodes whose truth is ``ignore_index`` (or outside 0..K-1) add no loss.
        """
        delta = hamming_unary(truth, self.num_labels, class_weights=class_weights,
                              normalize=normalize, ignore_index=ignore_index)
        if delta.shape[0] != self.num_nodes:
            raise SolverError(f"truth has {delta.shape[0]} entries, problem has {self.num_nodes} nodes")
        return replace(self, unary=self.unary + delta, meta=dict(self.meta))


def hamming_unary(
    truth: Any,
    num_labels: int,
    *,
    class_weights: Any | None = None,
    normalize: bool = False,
    ignore_index: int | None = None,
) -> np.ndarray:
    """Hamming loss as unary scores (N, K): ``w_{y*_i}`` where ``c != y*_i``, 0 on ignored nodes."""
    t = _as_numpy(truth, np.int64).reshape(-1)
    valid = (t >= 0) & (t < num_labels)
    if ignore_index is not None:
        valid &= t != ignore_index
    weights = np.ones(num_labels) if class_weights is None else _as_numpy(class_weights, np.float64)
    if weights.shape != (num_labels,):
        raise SolverError(f"class_weights must have shape ({num_labels},), got {tuple(weights.shape)}")
    tv = np.where(valid, t, 0)
    delta = np.where(valid, weights[tv], 0.0)[:, None] * np.ones((1, num_labels))
    delta[np.arange(t.shape[0]), tv] = 0.0
    delta[~valid] = 0.0
    if normalize:
        delta /= max(int(valid.sum()), 1)
    return delta


def hamming_loss(
    labels: Any,
    truth: Any,
    num_labels: int,
    *,
    class_weights: Any | None = None,
    normalize: bool = False,
    ignore_index: int | None = None,
) -> float:
    """Delta(y, y*) consistent with :func:`hamming_unary`."""
    y = _as_numpy(labels, np.int64).reshape(-1)
    delta = hamming_unary(truth, num_labels, class_weights=class_weights, normalize=normalize,
                          ignore_index=ignore_index)
    return float(delta[np.arange(y.shape[0]), y].sum())
