"""The common result type and the solver registry behind :func:`infer`."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from structseg.errors import SolverError
from structseg.structured.problem import LabelingProblem


@dataclass
class InferenceResult:
    """MAP labeling and how much to trust it.

    ``labels`` (N,) or (H, W) int64; ``score`` = S(labels) on the problem that was
    solved (the loss-augmented one when ``loss_augment_truth`` was given);
    ``status``: "optimal" (proved), "feasible" (a solution without proof),
    "time_limit" (stopped by the limit; best solution found), "approximate"
    (heuristic solver); ``bound``: an upper bound on the optimal score when the
    solver has one; ``time`` in seconds; ``info``: solver-specific details.
    """

    labels: np.ndarray
    score: float
    status: str
    bound: float | None = None
    time: float = 0.0
    solver: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def energy(self) -> float:
        return -self.score

    @property
    def gap(self) -> float | None:
        """bound - score (>= 0) when a bound is known."""
        return None if self.bound is None else self.bound - self.score


@dataclass(frozen=True)
class SolverSpec:
    name: str
    fn: Callable[..., InferenceResult]
    exact: bool
    description: str


_REGISTRY: dict[str, SolverSpec] = {}
FAST_SOLVERS = ("expansion", "bp", "icm")


def register(name: str, *, exact: bool,
             description: str) -> Callable[[Callable[..., InferenceResult]], Callable[..., InferenceResult]]:
    """Decorator: make ``fn(problem, *, time_limit, **opts) -> InferenceResult`` available as ``name``."""

    def deco(fn: Callable[..., InferenceResult]) -> Callable[..., InferenceResult]:
        _REGISTRY[name] = SolverSpec(name, fn, exact, description)
        return fn

    return deco


def get_solver(name: str) -> SolverSpec:
    if name not in _REGISTRY:
        raise SolverError(f"unknown solver {name!r}; valid solvers: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def list_solvers() -> dict[str, str]:
    """Solver name -> one-line description."""
    return {name: spec.description for name, spec in sorted(_REGISTRY.items())}


def finish(
    problem: LabelingProblem,
    labels: np.ndarray,
    status: str,
    started: float,
    *,
    bound: float | None = None,
    solver: str = "",
    **info: Any,
) -> InferenceResult:
    """Package a labeling: recompute its score on ``problem`` (never trust a solver's objective)."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    score = problem.score(y)
    if bound is not None and bound < score:  # rounding noise is clipped; a real violation drops the bound
        if score - bound > 1e-6 * (1.0 + abs(score)):
            info["invalid_bound"] = bound
            bound = None
        else:
            bound = score
    if problem.shape is not None:
        y = y.reshape(problem.shape)
    return InferenceResult(y, score, status, bound, time.perf_counter() - started, solver, dict(info))
