"""Independent oracles for the structured tests: exhaustive enumeration and explicit loops."""
from __future__ import annotations

import itertools

import numpy as np


def all_labelings(num_nodes: int, num_labels: int) -> np.ndarray:
    """Every labeling, (K^N, N)."""
    return np.array(list(itertools.product(range(num_labels), repeat=num_nodes)), dtype=np.int64)


def pair_value(kind: str, pairwise: np.ndarray, e: int, a: int, b: int) -> float:
    if kind == "agreement":
        return float(pairwise[e, a]) if a == b else 0.0
    if kind == "full":
        return float(pairwise[e, a, b])
    return float(pairwise[a, b])


def loop_score(unary: np.ndarray, edges: np.ndarray, pairwise: np.ndarray, kind: str, labels: np.ndarray) -> float:
    """S(y) by explicit loops over nodes and edges."""
    s = sum(float(unary[i, labels[i]]) for i in range(len(labels)))
    for e, (i, j) in enumerate(edges):
        s += pair_value(kind, pairwise, e, int(labels[i]), int(labels[j]))
    return s


def brute_force(unary: np.ndarray, edges: np.ndarray, pairwise: np.ndarray, kind: str,
                extra_unary: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """(max score, a maximiser, all scores) by enumerating every labeling."""
    n, k = unary.shape
    u = unary if extra_unary is None else unary + extra_unary
    ys = all_labelings(n, k)
    scores = u[np.arange(n)[None, :], ys].sum(1)
    for e, (i, j) in enumerate(edges):
        a, b = ys[:, i], ys[:, j]
        if kind == "agreement":
            scores = scores + np.where(a == b, pairwise[e, a], 0.0)
        elif kind == "full":
            scores = scores + pairwise[e, a, b]
        else:
            scores = scores + pairwise[a, b]
    best = int(scores.argmax())
    return float(scores[best]), ys[best], scores


def hamming_extra(truth: np.ndarray, num_labels: int) -> np.ndarray:
    """Unary (N, K) adding 1 wherever the label differs from the truth."""
    extra = np.ones((len(truth), num_labels))
    extra[np.arange(len(truth)), truth] = 0.0
    return extra


def random_pairwise(rng: np.random.Generator, kind: str, num_edges: int, k: int, scale: float,
                    sign: str = "mixed") -> np.ndarray:
    shape = {"agreement": (num_edges, k), "full": (num_edges, k, k), "shared": (k, k)}[kind]
    p = rng.normal(size=shape) * scale
    if sign == "positive":
        p = np.abs(p)
    elif sign == "negative":
        p = -np.abs(p)
    return p
