"""Exact MAP where the grid allows it in time, else a fast solver: what evaluation wants from an SSVM.

``exact_or_fast`` runs the exact solver (``milp`` by default) with ``exact_time_limit``; when it proves the optimum
that labeling is returned, and the fast solver (``bp`` by default) also runs so ``info`` says whether it would
have reached the proven optimum (``fast_reached_optimum``, ``fast_gap``). When the exact solver runs out of time,
the fast solver's labeling is returned (``exact_optimal`` False).
"""
from __future__ import annotations

import time
from typing import Any

from structseg.structured.inference.base import InferenceResult, finish, get_solver, register
from structseg.structured.problem import LabelingProblem


@register("exact_or_fast", exact=False,
          description="exact MILP within exact_time_limit, else the fast solver (bp); reports whether bp was optimal")
def solve_exact_or_fast(problem: LabelingProblem, *, time_limit: float | None = None, exact: str = "milp",
                        fast: str = "bp", exact_time_limit: float = 10.0,
                        fast_options: dict[str, Any] | None = None) -> InferenceResult:
    started = time.perf_counter()
    limit = exact_time_limit if time_limit is None else min(exact_time_limit, time_limit)
    fast_result = get_solver(fast).fn(problem, time_limit=time_limit, **(fast_options or {}))
    exact_result = get_solver(exact).fn(problem, time_limit=limit)
    if exact_result.status == "optimal":
        gap = exact_result.score - fast_result.score
        return finish(problem, exact_result.labels, "optimal", started, bound=exact_result.bound,
                      solver="exact_or_fast", exact_optimal=True, fast_gap=gap,
                      fast_reached_optimum=bool(gap <= 1e-9 * (1.0 + abs(exact_result.score))))
    return finish(problem, fast_result.labels, "approximate", started, bound=exact_result.bound,
                  solver="exact_or_fast", exact_optimal=False, exact_status=exact_result.status)
