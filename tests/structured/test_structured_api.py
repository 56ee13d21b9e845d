"""The infer() interface: names, options, size limits and time limits."""
from __future__ import annotations

import numpy as np
import pytest

from structseg.errors import SolverError
from structseg.structured.inference import infer, list_solvers
from structseg.structured.problem import LabelingProblem


def test_list_solvers_and_unknown_name() -> None:
    names = list_solvers()
    assert {"ilp", "milp", "lp", "bp", "expansion", "icm"} <= set(names)
    p = LabelingProblem.potts(np.zeros((2, 2, 2)), 0.5)
    with pytest.raises(SolverError) as err:
        infer(p, "simplex")
    assert all(name in str(err.value) for name in names)
    with pytest.raises(SolverError, match="max_iter"):
        infer(p, "bp", iterations=3)
    with pytest.raises(SolverError, match="cbc"):
        infer(p, "ilp", backend="gurobi")


def test_too_large_problem_names_alternatives() -> None:
    p = LabelingProblem.potts(np.random.default_rng(0).normal(size=(20, 20, 5)), 2.0)
    for solver in ("ilp", "milp", "lp"):
        with pytest.raises(SolverError) as err:
            infer(p, solver, max_variables=500)
        msg = str(err.value)
        assert "too large" in msg and "bp" in msg and "expansion" in msg


def test_time_limit_returns_a_valid_labeling() -> None:
    # strong coupling, no reduction: HiGHS cannot prove optimality of 1,500 nodes in 0.2 s
    rng = np.random.default_rng(0)
    p = LabelingProblem.potts(rng.normal(size=(30, 50, 8)), 1.5)
    r = infer(p, "milp", time_limit=0.2, reduce=False)
    assert r.status == "time_limit"
    assert r.labels.shape == (30, 50) and r.labels.min() >= 0 and r.labels.max() < 8
    assert r.score == pytest.approx(p.score(r.labels))
    assert r.time < 5.0
    # CBC can overrun its own limit by minutes: it runs in a child process killed after the limit
    cbc = infer(p, "ilp", time_limit=0.3, reduce=False)
    assert cbc.status == "time_limit" and cbc.time < 5.0
    assert cbc.score == pytest.approx(p.score(cbc.labels))
    fast = infer(p, "bp", time_limit=1e-4, max_iter=1000)
    assert fast.status == "time_limit" and not fast.info["converged"]
    assert fast.score == pytest.approx(p.score(fast.labels))
