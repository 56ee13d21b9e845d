"""Exact MAP at evaluation: on how many images does the exact solver prove the optimum, and does bp reach it?

For each fine-tuned ssvm run (default: the residual SSVM rows of ``structured_camvid.py``), every CamVid val image
(at the run's eval scale) gives the MAP problem on the head's grid; the ``exact_or_fast`` solver runs the MILP within
``--limit`` seconds and bp beside it. Prints per run: images, proven optima, the share where bp reached the proven
optimum, bp's mean and largest score gap, exact solver seconds. Writes benchmarks/results/ssvm_exact_share.json.

    python benchmarks/ssvm_exact_share.py [--runs runs/structured_camvid_60/ssvm_res ...] [--limit 20] [--images 101]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from _harness import RESULTS, ROOT, parser, print_table, write_json


def measure(run: Path, images: int, limit: float) -> dict[str, Any]:
    """Solver statistics of one ssvm run over ``images`` val images spread over the split."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from structseg.engine.build import build_eval_dataset
    from structseg.engine.predict import Predictor
    from structseg.structured.inference import infer
    from structseg.viz.grid import spread_indices

    predictor = Predictor.from_run(run, prepare=False)
    cfg = predictor.config
    assert cfg is not None
    val = build_eval_dataset(cfg)
    scale = cfg.eval.scales[0]
    records = []
    for i in tqdm(spread_indices(len(val), images), desc=run.name):
        x = val[i][0][None]
        if scale != 1.0:
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        with torch.no_grad():
            problem = predictor.model.problems(x)[0]  # type: ignore[operator]
        start = time.perf_counter()
        result = infer(problem, "exact_or_fast", exact_time_limit=limit)
        records.append({"image": int(i), "seconds": time.perf_counter() - start, **result.info})
    proven = [r for r in records if r.get("exact_optimal")]
    gaps = [float(r["fast_gap"]) for r in proven]
    return {"run": str(run), "images": len(records), "proven_optimal": len(proven),
            "bp_reached_optimum": sum(bool(r["fast_reached_optimum"]) for r in proven),
            "bp_mean_gap": sum(gaps) / max(1, len(gaps)), "bp_max_gap": max(gaps, default=0.0),
            "mean_seconds": sum(r["seconds"] for r in records) / max(1, len(records)), "records": records}


def main() -> int:
    p = parser(__doc__, out=RESULTS / "ssvm_exact_share.json")
    work = ROOT / "runs" / "structured_camvid_60"
    p.add_argument("--runs", nargs="+", type=Path, default=[work / "ssvm_res", work / "ssvm_full_res"],
                   help="fine-tuned ssvm run directories")
    p.add_argument("--limit", type=float, default=20.0, help="exact solver's time limit per image, seconds")
    p.add_argument("--images", type=int, default=101, help="val images per run, spread over the split")
    args = p.parse_args()
    missing = [str(r) for r in args.runs if not (r / "checkpoints" / "best.pt").is_file()]
    if missing:
        print(f"no trained ssvm run at {', '.join(missing)}: run benchmarks/structured_camvid.py first")
        return 1
    results = [measure(run, args.images, args.limit) for run in args.runs]
    table = [{**r, "run": Path(r["run"]).name, "share": r["bp_reached_optimum"] / max(1, r["proven_optimal"])}
             for r in results]
    print_table(table, [("run", "{run}"), ("images", "{images}"), ("proven optimal", "{proven_optimal}"),
                        ("bp optimal", "{bp_reached_optimum}"), ("share", "{share:.0%}"),
                        ("bp mean gap", "{bp_mean_gap:.3f}"), ("bp max gap", "{bp_max_gap:.3f}"),
                        ("s/image", "{mean_seconds:.2f}")])
    write_json(args.out, {"limit_s": args.limit, "runs": results})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
