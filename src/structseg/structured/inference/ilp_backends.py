"""The solvers behind :mod:`structseg.structured.inference.ilp`: scipy's HiGHS and OR-Tools (CBC in a forked
process, which a time limit can stop; SCIP, GLOP, PDLP in this one), each taking an :class:`IlpModel` and returning
a :class:`Solution`."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from structseg.errors import SolverError

if TYPE_CHECKING:
    from structseg.structured.inference.ilp import IlpModel

__all__ = ["Solution", "solve_ortools", "solve_scipy"]


@dataclass
class Solution:
    values: np.ndarray | None
    status: str  # optimal | time_limit | infeasible | error
    bound: float | None  # on objective @ v (without constant)


def solve_scipy(model: IlpModel, *, relax: bool, time_limit: float | None, presolve: bool = False) -> Solution:
    """HiGHS through scipy. Presolve is off by default: on these models it is slower and it ignores the time limit."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    integrality = np.zeros(model.num_vars)
    if not relax:
        integrality[: model.num_x] = 1
    options: dict[str, Any] = {"mip_rel_gap": 0.0, "presolve": presolve}
    if time_limit is not None:
        options["time_limit"] = max(float(time_limit), 1e-3)
    constraints = [LinearConstraint(model.matrix, model.row_lb, model.row_ub)] if model.matrix.shape[0] else []
    res = milp(-model.objective, integrality=integrality, bounds=Bounds(0.0, 1.0),
               constraints=constraints, options=options)
    values = None if res.x is None else np.asarray(res.x)
    bound: float | None
    if res.status == 0:
        bound = -float(res.fun)
        dual = getattr(res, "mip_dual_bound", None)
        if not relax and dual is not None and np.isfinite(dual):
            bound = max(-float(res.fun), -float(dual))
        return Solution(values, "optimal", bound)
    if res.status == 1:
        dual = getattr(res, "mip_dual_bound", None)
        bound = -float(dual) if dual is not None and np.isfinite(dual) else None
        return Solution(values, "time_limit", bound)
    return Solution(values, "error", None)


def _ortools_helper(model: IlpModel, relax: bool) -> Any:
    """The model in OR-Tools' C++ model builder, filled from the sparse matrix in one call."""
    from ortools.linear_solver.python import model_builder_helper as mbh

    helper = mbh.ModelBuilderHelper()
    nv = model.num_vars
    helper.fill_model_from_sparse_data(np.zeros(nv), np.ones(nv), model.objective,  # type: ignore[arg-type]
                                       model.row_lb, model.row_ub,  # type: ignore[arg-type]
                                       model.matrix.astype(np.float64))
    helper.set_maximize(True)
    if not relax:
        for v in range(model.num_x):
            helper.set_var_integrality(v, True)
    return helper


def _finite(v: Any) -> float | None:
    return float(v) if v is not None and np.isfinite(v) and abs(v) < 1e30 else None


def solve_ortools(model: IlpModel, backend: str, *, relax: bool, time_limit: float | None) -> Solution:
    """SCIP / GLOP / PDLP through ``ModelSolverHelper``; CBC through pywraplp (see :func:`_solve_cbc`).

    Bounds are reported only for proven optima: at a time limit these
    interfaces return placeholders (0 or the incumbent) rather than dual bounds.
    """
    helper = _ortools_helper(model, relax)
    if backend == "cbc":
        return _solve_cbc(helper, time_limit)
    from ortools.linear_solver.python import model_builder_helper as mbh

    solver = mbh.ModelSolverHelper(backend)
    if not solver.solver_is_supported():
        raise SolverError(f"OR-Tools in this environment lacks the {backend!r} solver")
    solver.enable_output(False)
    if time_limit is not None:
        solver.set_time_limit_in_seconds(max(float(time_limit), 1e-3))
    solver.solve(helper)
    name = getattr(solver.status(), "name", str(solver.status()))
    values = np.asarray(solver.variable_values()) if solver.has_solution() else None
    if name == "OPTIMAL" and values is not None:
        return Solution(values, "optimal",
                         float(model.objective @ values) if relax else _finite(solver.best_objective_bound()))
    if values is not None or name in ("FEASIBLE", "NOT_SOLVED"):
        return Solution(values, "time_limit", None)
    return Solution(None, "error", None)


def _cbc_worker(proto_bytes: bytes, time_limit: float | None, conn: Any = None) -> bytes:
    """Solve a serialised MPModelProto with CBC at zero MIP gap; return the serialised MPSolutionResponse."""
    from ortools.linear_solver import linear_solver_pb2, pywraplp  # type: ignore[attr-defined]

    solver = pywraplp.Solver.CreateSolver("CBC")
    error = solver.LoadModelFromProto(linear_solver_pb2.MPModelProto.FromString(proto_bytes))
    if error:
        raise SolverError(f"CBC could not load the model: {error}")
    if time_limit is not None:
        solver.SetTimeLimit(max(int(time_limit * 1000), 1))
    params = pywraplp.MPSolverParameters()
    params.SetDoubleParam(params.RELATIVE_MIP_GAP, 0.0)
    solver.Solve(params)
    response = linear_solver_pb2.MPSolutionResponse()
    solver.FillSolutionResponseProto(response)
    out = response.SerializeToString()
    if conn is not None:
        conn.send_bytes(out)
        conn.close()
    return cast(bytes, out)


def _solve_cbc(helper: Any, time_limit: float | None) -> Solution:
    """CBC is reachable only through pywraplp; it can overrun its own time limit by minutes
    (root cuts are not interruptible), so with a limit it runs in a forked process that is
    killed 1 s after the limit, which then counts as "time_limit" without a solution."""
    from ortools.linear_solver import linear_solver_pb2  # type: ignore[attr-defined]

    fd, path = tempfile.mkstemp(suffix=".pb")
    os.close(fd)
    try:
        helper.write_model_to_proto_file(path)
        with open(path, "rb") as fh:
            proto_bytes = fh.read()
    finally:
        os.unlink(path)
    raw: bytes | None
    if time_limit is None:
        raw = _cbc_worker(proto_bytes, None)
    else:
        raw = _run_forked(_cbc_worker, proto_bytes, time_limit, grace=1.0 + 0.1 * time_limit)
        if raw is None:
            return Solution(None, "time_limit", None)
    response = linear_solver_pb2.MPSolutionResponse.FromString(raw)
    values = np.asarray(response.variable_value) if len(response.variable_value) else None
    if response.status == linear_solver_pb2.MPSOLVER_OPTIMAL and values is not None:
        bound = _finite(response.best_objective_bound) if response.HasField("best_objective_bound") else None
        return Solution(values, "optimal", bound if bound is not None else float(response.objective_value))
    if values is not None or response.status in (linear_solver_pb2.MPSOLVER_FEASIBLE,
                                                 linear_solver_pb2.MPSOLVER_NOT_SOLVED):
        return Solution(values, "time_limit", None)
    return Solution(None, "error", None)


def _run_forked(fn: Any, payload: bytes, time_limit: float, grace: float) -> bytes | None:
    """``fn(payload, time_limit, conn)`` in a forked child; its bytes, or None if it misses the deadline."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=fn, args=(payload, time_limit, child), daemon=True)
    proc.start()
    child.close()
    try:
        if parent.poll(time_limit + grace):
            return parent.recv_bytes()
        return None
    except EOFError:
        raise SolverError("the CBC worker process died without an answer") from None
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        parent.close()
