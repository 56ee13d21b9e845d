"""What the inference fast path costs in accuracy on trained weights.

For each trained run (default: the CamVid runs that ``camvid_budget.py`` leaves in ``runs/``), its best checkpoint
is evaluated on the val split three ways, same data, same eval settings (the run's ``eval:`` section):

- fp32: contiguous, no BatchNorm folding (``model.fast_path: off``);
- this CPU's fast path (``select_fast_path``: channels_last and BN folding; bf16 autocast only where the CPU
  has native bf16);
- the bf16 fast path (channels_last + BN folding + bf16 autocast), forced: what a CPU with native bf16 runs.
  On a CPU without native bf16 torch emulates it (slowly) with the same rounding, so its accuracy is measured
  on any CPU.

Reported: mIoU and pixel accuracy of each, their difference to fp32, and the share of pixels whose label
equals fp32's. Writes benchmarks/results/fast_path_accuracy.json.

    python benchmarks/fast_path_accuracy.py [--runs runs/camvid_budget_pretrained runs/camvid_budget] [--limit N]
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from _harness import RESULTS, ROOT, machine, parser, print_table, write_json
from structseg.engine.build import build_eval_dataset
from structseg.engine.config import apply_overrides, load_config
from structseg.engine.evaluate import predict_labels
from structseg.engine.predict import Predictor
from structseg.engine.rundir import existing_run
from structseg.metrics import ConfusionMatrix
from structseg.models.fastpath import FastPath

RUNS = [ROOT / "runs" / "camvid_budget_pretrained", ROOT / "runs" / "camvid_budget"]

# name -> None (fp32), "auto" (the engine's choice for this CPU) or a forced FastPath
PATHS: dict[str, FastPath | str | None] = {
    "fp32": None,
    "this CPU's fast path": "auto",
    "bf16 fast path (forced)": FastPath(channels_last=True, autocast_dtype=torch.bfloat16, fold_batchnorm=True),
}


def _predictor(run: Path, path: FastPath | str | None, root: str | None) -> Predictor:
    """The run's best checkpoint on ``path`` (None: fp32; "auto": the engine's own choice)."""
    rd = existing_run(run)
    overrides = [f"data.root={root}"] if root else []
    cfg = apply_overrides(load_config(rd.config), [*overrides, f"model.fast_path={'off' if path is None else 'auto'}"])
    predictor = Predictor.from_checkpoint(rd.checkpoint("best"), cfg, device="cpu")
    if isinstance(path, FastPath):  # forced: rebuild the inference model on that path from the fp32 one
        plain = Predictor.from_checkpoint(rd.checkpoint("best"), apply_overrides(cfg, ["model.fast_path=off"]),
                                          device="cpu")
        predictor.model = path.prepare_inference(plain.model)
        predictor.fast_path = path
    return predictor


def measure(run: Path, root: str | None, limit: int | None) -> dict:
    cfg = load_config(existing_run(run).config)
    if root:
        cfg = apply_overrides(cfg, [f"data.root={root}"])
    full = build_eval_dataset(cfg)
    dataset = Subset(full, range(min(limit or len(full), len(full))))
    rows, reference = {}, []
    for name, path in PATHS.items():
        predictor = _predictor(run, path, root)
        cm = ConfusionMatrix(full.classes.num_classes, ignore_index=full.classes.ignore_index)
        same = total = 0
        for i, (images, masks) in enumerate(tqdm(DataLoader(dataset, batch_size=1), desc=f"{run.name}: {name}",
                                                 leave=False)):
            with torch.inference_mode():
                labels = predict_labels(predictor.model, images, predictor.eval_cfg, predictor.fast_path)
            cm.update(labels, masks)
            if name == "fp32":
                reference.append(labels)
            else:
                same += int((labels == reference[i]).sum())
                total += labels.numel()
        m = cm.compute()
        described = predictor.fast_path.describe() if predictor.fast_path is not None else "fp32"
        rows[name] = {"path": described, "fold_batchnorm": bool(getattr(predictor.fast_path, "fold_batchnorm", False)),
                      "miou": m.miou, "pixel_acc": m.pixel_acc,
                      "agreement_with_fp32": same / total if total else 1.0}
    base = rows["fp32"]
    for row in rows.values():
        row["miou_minus_fp32"] = row["miou"] - base["miou"]
    return {"run": str(run), "model": dataclasses.asdict(cfg.model), "images": len(dataset), "rows": rows}


def main() -> int:
    p = parser(__doc__, out=RESULTS / "fast_path_accuracy.json")
    p.add_argument("--runs", nargs="+", type=Path, default=RUNS)
    p.add_argument("--root", help="data root override (CamVid)")
    p.add_argument("--limit", type=int, help="evaluate the first N val images only")
    args = p.parse_args()
    runs = [r for r in args.runs if (r / "checkpoints" / "best.pt").is_file()]
    if not runs:
        print(f"no trained run among {', '.join(map(str, args.runs))}: run benchmarks/camvid_budget.py first")
        return 1
    results = [measure(run, args.root, args.limit) for run in runs]
    host = machine()
    print(f"CPU: {host['cpu']}, native bf16: {host['native_bf16']}")
    table = [{**row, "run": Path(res["run"]).name, "name": name}
             for res in results for name, row in res["rows"].items()]
    print_table(table, [("run", "{run}"), ("path", "{name} ({path})"), ("mIoU", "{miou:.2%}"),
                        ("- fp32", "{miou_minus_fp32:+.2%}"), ("pixel acc", "{pixel_acc:.2%}"),
                        ("= fp32 labels", "{agreement_with_fp32:.2%}")], left=2)
    write_json(args.out, {"cpu": host["cpu"], "native_bf16": host["native_bf16"], "torch": torch.__version__,
                          "results": results, "machine": host})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
