"""Time and optimality gap of every MAP solver on random Potts-like grids.

Problems: H x H grids, K labels, unaries N(0, 1), 4-connected agreement
potentials with weight ``w`` for every class (a Potts model). For each size
the exact solvers run first (with a time limit; the plain, unreduced ILPs are
skipped above ``--plain-max-side``), then the LP relaxation and the fast
solvers. Gap = (best proven optimum - score) / |optimum| in percent; where no
solver proves an optimum the reference is the best upper bound (LP), marked.

    python benchmarks/ssvm_inference.py                 # full table (about 5 minutes on 2 cores)
    python benchmarks/ssvm_inference.py --sizes 8 16 --labels 11

Prints a table, writes benchmarks/results/ssvm_inference.json and a PNG.
"""
from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import numpy as np

from _harness import RESULTS, parser, write_json
from structseg.errors import SolverError
from structseg.structured.inference import infer
from structseg.structured.problem import LabelingProblem

# (row name, solver, options, exact?, plain?)
SOLVERS = [
    ("ilp-cbc plain", "ilp", {"reduce": False}, True, True),
    ("milp-highs plain", "milp", {"reduce": False}, True, True),
    ("ilp-cbc +DEE", "ilp", {}, True, False),
    ("ilp-scip +DEE", "ilp", {"backend": "scip"}, True, False),
    ("milp-highs +DEE", "milp", {}, True, False),
    ("lp-highs", "lp", {}, False, True),
    ("bp", "bp", {}, False, False),
    ("expansion", "expansion", {}, False, False),
    ("icm", "icm", {}, False, False),
]


def run_one(problem: LabelingProblem, solver: str, opts: dict, time_limit: float, repeats: int) -> dict:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = infer(problem, solver, time_limit=time_limit, **opts)
        times.append(time.perf_counter() - t0)
    return {"time": statistics.median(times), "score": result.score, "status": result.status,
            "bound": result.bound,
            "info": {k: v for k, v in result.info.items() if isinstance(v, (int, float, bool, str))}}


def main() -> None:
    cli = parser(__doc__, out=RESULTS / "ssvm_inference.json")
    cli.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    cli.add_argument("--labels", type=int, nargs="+", default=[11, 21])
    cli.add_argument("--weight", type=float, default=0.5, help="Potts agreement weight")
    cli.add_argument("--time-limit", type=float, default=60.0, help="per exact solve, seconds")
    cli.add_argument("--plain-max-side", type=int, default=64, help="skip the unreduced ILPs above this side")
    cli.add_argument("--repeats", type=int, default=3, help="median over this many runs (fast solvers)")
    cli.add_argument("--seed", type=int, default=0)
    args = cli.parse_args()

    warm = LabelingProblem.potts(np.random.default_rng(1).normal(size=(4, 4, 3)), args.weight)
    for _, solver, opts, _, _ in SOLVERS:  # imports and first-call costs out of the timings
        infer(warm, solver, **opts)

    records = []
    rng = np.random.default_rng(args.seed)
    for k in args.labels:
        for side in args.sizes:
            problem = LabelingProblem.potts(rng.normal(size=(side, side, k)), args.weight)
            rows = {}
            for name, solver, opts, exact, plain in SOLVERS:
                if plain and exact and side > args.plain_max_side:
                    rows[name] = {"skipped": f"plain ILP above {args.plain_max_side}x{args.plain_max_side}"}
                    continue
                try:
                    rows[name] = run_one(problem, solver, opts, args.time_limit,
                                         1 if exact or solver == "lp" else args.repeats)
                except SolverError as exc:
                    rows[name] = {"skipped": str(exc)}
                print(f"  {side}x{side} K={k} {name}: {rows[name].get('time', '-')}", flush=True)
            optima = [r["score"] for n, r in rows.items() if "status" in r and r["status"] == "optimal"
                      and any(n == s[0] and s[3] for s in SOLVERS)]
            bounds = [r["bound"] for r in rows.values() if r.get("bound") is not None]
            if optima:
                reference, ref_kind = max(optima), "optimum"
            else:
                reference, ref_kind = ((min(bounds), "bound") if bounds
                                       else (max(r["score"] for r in rows.values() if "score" in r), "best"))
            plain_time = rows.get("ilp-cbc plain", {}).get("time")
            dee_time = rows.get("milp-highs +DEE", {}).get("time")
            for name, r in rows.items():
                rec = {"side": side, "labels": k, "weight": args.weight, "solver": name, **r,
                       "reference": reference, "reference_kind": ref_kind}
                if "score" in r:
                    rec["gap_pct"] = 100.0 * (reference - r["score"]) / abs(reference)
                    rec["speedup_vs_plain_ilp"] = plain_time / r["time"] if plain_time else None
                    rec["speedup_vs_milp_dee"] = dee_time / r["time"] if dee_time else None
                records.append(rec)

    print()
    print(f"Potts grids, unaries N(0,1), w = {args.weight}, 4-connected; times = median wall seconds; "
          f"gap vs the best proven optimum")
    print("| grid | K | solver | time (s) | gap % | status | x plain CBC | x milp+DEE | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in records:
        if "skipped" in r:
            print(f"| {r['side']}x{r['side']} | {r['labels']} | {r['solver']} | - | - | skipped | | "
                  f"| {r['skipped'][:60]} |")
            continue
        sp = lambda v: "" if v is None else f"{v:.0f}" if v >= 10 else f"{v:.2g}"  # noqa: E731
        note = "ref=" + r["reference_kind"] if r["reference_kind"] != "optimum" else ""
        if "variables" in r["info"]:
            note += f" vars={r['info']['variables']}"
        print(f"| {r['side']}x{r['side']} | {r['labels']} | {r['solver']} | {r['time']:.4f} | {r['gap_pct']:.3f} | "
              f"{r['status']} | {sp(r['speedup_vs_plain_ilp'])} | {sp(r['speedup_vs_milp_dee'])} | {note.strip()} |")

    meta = {"python": platform.python_version(), "machine": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d %H:%M"), "args": vars(args)}
    write_json(args.out, {"meta": meta, "records": records})
    plot(records, args.out.with_suffix(".png"))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({r["labels"] for r in records})
    fig, axes = plt.subplots(1, len(ks), figsize=(6 * len(ks), 4.5), squeeze=False)
    for ax, k in zip(axes[0], ks):
        for name in dict.fromkeys(r["solver"] for r in records):
            pts = [(r["side"] ** 2, r["time"]) for r in records
                   if r["labels"] == k and r["solver"] == name and "time" in r]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
        ax.set(xscale="log", yscale="log", xlabel="nodes", ylabel="seconds", title=f"MAP solvers, K={k}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
