"""Exact MAP by integer linear programming, and its LP relaxation.

Formulation (maximisation), over the nodes and labels left by
:func:`~structseg.structured.inference.reduce.reduce_problem`:

- binary ``x_i,c`` (node ``i`` takes ``c``), ``sum_c x_i,c = 1``;
- agreement form, one ``y_ij,c`` per edge and class with ``w_ij,c != 0``:
  ``w > 0``: ``y <= x_i,c``, ``y <= x_j,c`` (the maximisation pushes ``y`` up to
  ``min``); ``w < 0``: ``y >= x_i,c + x_j,c - 1`` (pushed down to ``max(0, .)``);
- full / shared form, ``y_ij,cd`` with the local-polytope marginalisation
  ``sum_d y_ij,cd = x_i,c`` and ``sum_c y_ij,cd = x_j,d``.

``y`` is continuous in [0, 1]: integral ``x`` forces integral ``y`` at the optimum.
The constraint matrix is built vectorised as a ``scipy.sparse`` matrix and
handed in one call to scipy's HiGHS (``milp``) or to OR-Tools
(``ModelBuilderHelper.fill_model_from_sparse_data``), so building a 64x64, K=21
model takes milliseconds instead of seconds of per-variable Python calls.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from structseg.errors import SolverError
from structseg.structured.inference.base import FAST_SOLVERS, InferenceResult, finish, register
from structseg.structured.inference.ilp_backends import Solution, solve_ortools, solve_scipy
from structseg.structured.inference.reduce import Reduced, reduce_problem
from structseg.structured.problem import LabelingProblem

INTEGRALITY_TOL = 1e-6
DEFAULT_MAX_VARIABLES = 500_000  # a plain 64x64, K=21 ILP has 255k; its LP takes ~20 s here


@dataclass
class IlpModel:
    """Maximise ``objective @ v + constant`` s.t. ``row_lb <= A v <= row_ub``, ``0 <= v <= 1``, ``v[:num_x]``
    integer."""

    objective: np.ndarray
    matrix: sp.csr_matrix
    row_lb: np.ndarray
    row_ub: np.ndarray
    num_x: int
    x_node: np.ndarray
    x_label: np.ndarray
    constant: float
    reduced: Reduced

    @property
    def num_vars(self) -> int:
        return int(self.objective.shape[0])

    def decode(self, values: np.ndarray) -> tuple[np.ndarray, bool]:
        """Labeling (argmax of x per node, fixed nodes kept) and whether x was integral."""
        x = np.asarray(values[: self.num_x], dtype=np.float64)
        red = self.reduced
        n, k = red.domains.shape
        table = np.full((n, k), -np.inf)
        table[self.x_node, self.x_label] = x
        labels = np.where(red.free_nodes, table.argmax(1), red.fixed_labels)
        integral = bool(np.all(np.minimum(np.abs(x), np.abs(1.0 - x)) <= INTEGRALITY_TOL))
        return labels.astype(np.int64), integral


def estimate_size(problem: LabelingProblem, red: Reduced) -> tuple[int, int]:
    """(variables, constraints) of the ILP on the reduced problem, without building it."""
    dom, free = red.domains, red.free_nodes
    e = problem.edges[red.free_edges]
    num_x = int(dom[free].sum())
    rows = int(free.sum())
    if problem.kind == "agreement":
        w = problem.pairwise[red.free_edges]
        both = dom[e[:, 0]] & dom[e[:, 1]] & (w != 0)
        num_y = int(both.sum())
        rows += int((both & (w > 0)).sum()) * 2 + int((both & (w < 0)).sum())
    else:
        di, dj = dom[e[:, 0]].sum(1), dom[e[:, 1]].sum(1)
        num_y = int((di * dj).sum())
        rows += int((di + dj).sum())
    return num_x + num_y, rows


def build_model(problem: LabelingProblem, red: Reduced) -> IlpModel:
    """The sparse ILP of the reduced problem."""
    dom, free = red.domains, red.free_nodes
    n, k = dom.shape
    xmask = dom & free[:, None]
    x_node, x_label = np.nonzero(xmask)
    num_x = len(x_node)
    xid = np.full((n, k), -1, np.int64)
    xid[x_node, x_label] = np.arange(num_x)
    free_ids = np.nonzero(free)[0]
    row_of_node = np.full(n, -1, np.int64)
    row_of_node[free_ids] = np.arange(len(free_ids))
    rows, cols, vals = [row_of_node[x_node]], [np.arange(num_x)], [np.ones(num_x)]
    lb, ub = [np.ones(len(free_ids))], [np.ones(len(free_ids))]
    nrow = len(free_ids)
    objective = [red.unary[x_node, x_label]]
    fe = red.free_edges
    ei, ej = problem.edges[fe, 0], problem.edges[fe, 1]
    if problem.kind == "agreement":
        w = problem.pairwise[fe]
        m, c = np.nonzero(dom[ei] & dom[ej] & (w != 0))
        wv = w[m, c]
        yid = num_x + np.arange(len(m))
        xi, xj = xid[ei[m], c], xid[ej[m], c]
        pos, neg = np.nonzero(wv > 0)[0], np.nonzero(wv < 0)[0]
        p = len(pos)
        # w > 0: y - x_i <= 0 and y - x_j <= 0
        r1 = nrow + np.arange(p)
        r2 = nrow + p + np.arange(p)
        rows += [r1, r1, r2, r2]
        cols += [yid[pos], xi[pos], yid[pos], xj[pos]]
        vals += [np.ones(p), -np.ones(p), np.ones(p), -np.ones(p)]
        lb += [np.full(2 * p, -np.inf)]
        ub += [np.zeros(2 * p)]
        nrow += 2 * p
        # w < 0: x_i + x_j - y <= 1
        q = len(neg)
        r3 = nrow + np.arange(q)
        rows += [r3, r3, r3]
        cols += [xi[neg], xj[neg], yid[neg]]
        vals += [np.ones(q), np.ones(q), -np.ones(q)]
        lb += [np.full(q, -np.inf)]
        ub += [np.ones(q)]
        nrow += q
        objective.append(wv)
    else:
        tables = problem.edge_tables(fe)
        m, c, d = np.nonzero(dom[ei][:, :, None] & dom[ej][:, None, :])
        yid = num_x + np.arange(len(m))
        # row (m, c): sum_d y - x_i,c = 0 ; row (m, d): sum_c y - x_j,d = 0
        rid_i = np.full((len(fe), k), -1, np.int64)
        mi, ci = np.nonzero(dom[ei])
        rid_i[mi, ci] = nrow + np.arange(len(mi))
        nrow += len(mi)
        rid_j = np.full((len(fe), k), -1, np.int64)
        mj, dj = np.nonzero(dom[ej])
        rid_j[mj, dj] = nrow + np.arange(len(mj))
        nrow += len(mj)
        rows += [rid_i[m, c], rid_j[m, d], rid_i[mi, ci], rid_j[mj, dj]]
        cols += [yid, yid, xid[ei[mi], ci], xid[ej[mj], dj]]
        vals += [np.ones(len(m)), np.ones(len(m)), -np.ones(len(mi)), -np.ones(len(mj))]
        lb += [np.zeros(len(mi) + len(mj))]
        ub += [np.zeros(len(mi) + len(mj))]
        objective.append(tables[m, c, d])
    obj = np.concatenate(objective)
    matrix = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(nrow, len(obj))
    )
    return IlpModel(obj, matrix, np.concatenate(lb), np.concatenate(ub), num_x, x_node, x_label,
                    red.constant, red)


# ---------------------------------------------------------------------- solver entry points
def _prepare(problem: LabelingProblem, name: str, reduce: bool, max_variables: int) -> tuple[IlpModel, Reduced]:
    red = reduce_problem(problem, max_rounds=50 if reduce else 0)
    nvars, nrows = estimate_size(problem, red)
    if nvars > max_variables:
        raise SolverError(
            f"problem too large for {name!r}: {nvars} variables / {nrows} constraints after reduction "
            f"(limit max_variables={max_variables}); use a fast solver instead: {', '.join(FAST_SOLVERS)}"
        )
    return build_model(problem, red), red


def _fallback(problem: LabelingProblem, time_limit: float | None) -> np.ndarray:
    """A valid labeling when an exact solver stops without one: alpha-expansion / ICM."""
    from structseg.structured.inference import infer

    try:
        return np.asarray(infer(problem, "expansion").labels).reshape(-1)
    except SolverError:
        return np.asarray(infer(problem, "icm").labels).reshape(-1)


def _exact(problem: LabelingProblem, name: str, backend: str, *, time_limit: float | None,
           reduce: bool, max_variables: int, presolve: bool = False) -> InferenceResult:
    started = time.perf_counter()
    model, red = _prepare(problem, name, reduce, max_variables)
    build_time = time.perf_counter() - started
    remaining = None if time_limit is None else max(time_limit - build_time, 1e-3)
    if model.num_vars == 0:
        sol = Solution(np.zeros(0), "optimal", 0.0)
    elif backend == "scipy":
        sol = solve_scipy(model, relax=False, time_limit=remaining, presolve=presolve)
    else:
        sol = solve_ortools(model, backend, relax=False, time_limit=remaining)
    info = dict(backend=backend, variables=model.num_vars, constraints=int(model.matrix.shape[0]),
                free_nodes=red.num_free, dee_rounds=red.rounds, build_time=build_time)
    bound = None if sol.bound is None else sol.bound + model.constant
    if sol.values is None:
        if sol.status == "error":
            raise SolverError(f"{name!r} ({backend}) failed to solve the ILP")
        return finish(problem, _fallback(problem, time_limit), "time_limit", started, bound=bound,
                      solver=name, fallback=True, **info)
    labels, _ = model.decode(sol.values)
    status = sol.status if sol.status in ("optimal", "time_limit") else "feasible"
    return finish(problem, labels, status, started, bound=bound, solver=name, **info)


@register("ilp", exact=True,
          description="exact ILP through OR-Tools (backend='cbc' | 'scip'), after dead-end elimination")
def solve_ilp(problem: LabelingProblem, *, time_limit: float | None = None, backend: str = "cbc",
              reduce: bool = True, max_variables: int = DEFAULT_MAX_VARIABLES) -> InferenceResult:
    """Exact MAP with an OR-Tools MIP solver."""
    if backend not in ("cbc", "scip"):
        raise SolverError(f"unknown ilp backend {backend!r}; valid: cbc, scip")
    return _exact(problem, "ilp", backend, time_limit=time_limit, reduce=reduce, max_variables=max_variables)


@register("milp", exact=True, description="exact ILP through scipy.optimize.milp (HiGHS), after dead-end elimination")
def solve_milp(problem: LabelingProblem, *, time_limit: float | None = None, reduce: bool = True,
               max_variables: int = DEFAULT_MAX_VARIABLES, presolve: bool = False) -> InferenceResult:
    """Exact MAP with scipy's bundled HiGHS; the fastest exact route measured here."""
    return _exact(problem, "milp", "scipy", time_limit=time_limit, reduce=reduce, max_variables=max_variables,
                  presolve=presolve)


@register("lp", exact=False,
          description="LP relaxation (scipy HiGHS or OR-Tools GLOP/PDLP) + integrality check, "
                      "rounding+ICM if fractional")
def solve_lp(problem: LabelingProblem, *, time_limit: float | None = None, backend: str = "highs",
             reduce: bool = False, max_variables: int = DEFAULT_MAX_VARIABLES, polish: bool = True) -> InferenceResult:
    """Solve the LP relaxation; ``bound`` is its optimum (an upper bound on max S).

    Integral solution: status "optimal" (the LP bound proves it). Fractional:
    argmax of x per node, polished by ICM, status "approximate", ``info["fractional"]``
    the share of fractional nodes. ``reduce=True`` runs dead-end elimination
    first (the bound then holds for the reduced problem, which has the same optimum).
    """
    if backend not in ("highs", "glop", "pdlp"):
        raise SolverError(f"unknown lp backend {backend!r}; valid: highs, glop, pdlp")
    started = time.perf_counter()
    model, red = _prepare(problem, "lp", reduce, max_variables)
    remaining = None if time_limit is None else max(time_limit - (time.perf_counter() - started), 1e-3)
    if model.num_vars == 0:
        sol = Solution(np.zeros(0), "optimal", 0.0)
    elif backend == "highs":
        sol = solve_scipy(model, relax=True, time_limit=remaining)
    else:
        sol = solve_ortools(model, backend, relax=True, time_limit=remaining)
    if sol.values is None:
        if sol.status == "error":
            raise SolverError(f"'lp' ({backend}) failed to solve the relaxation")
        return finish(problem, _fallback(problem, time_limit), "time_limit", started, solver="lp", fallback=True)
    labels, integral = model.decode(sol.values)
    x = np.asarray(sol.values[: model.num_x])
    frac_nodes = np.unique(model.x_node[np.minimum(x, 1 - x) > INTEGRALITY_TOL])
    lp_value = float(model.objective @ sol.values) + model.constant
    bound = lp_value if sol.status == "optimal" else None
    if sol.status != "optimal":
        status = "time_limit"
    elif integral:
        status = "optimal"
    else:
        status = "approximate"
        if polish:
            from structseg.structured.inference.icm import icm

            labels = icm(problem, labels)
    return finish(problem, labels, status, started, bound=bound, solver="lp", backend=backend,
                  integral=integral, fractional=len(frac_nodes) / max(problem.num_nodes, 1),
                  variables=model.num_vars)
