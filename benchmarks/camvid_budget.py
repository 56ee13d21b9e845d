"""CamVid from random weights on the CPU, fixed wall-clock budget: structseg's recipe vs a plain smp loop.

structseg: ``configs/camvid_cpu.yaml`` trained by :class:`structseg.engine.Trainer` (its step time is
measured first and ``train.iterations`` set so that the cosine schedule ends near the budget;
``train.max_minutes`` stops it at the budget). Peer: segmentation_models_pytorch ``Unet("resnet18")``, AdamW
lr 1e-3 constant, cross-entropy, trained by a plain loop until the budget is spent. Both get the same
preloaded data, the same augmentation (the recipe's), the same fast path (channels_last + bf16 where
native) and the same evaluation (the recipe's ``eval`` section: full 360x480 labels). Budgets count
training time only (data loading included; evaluation excluded). The two runs are sequential.

    python benchmarks/camvid_budget.py                # 30 minutes each
    python benchmarks/camvid_budget.py --minutes 1    # smoke run

Writes benchmarks/results/camvid_budget.json and camvid_budget.png; prints the curves and the
final per-class IoU table.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="training-time budget of each run")
    p.add_argument("--root", default=str(ROOT.parent / "shared" / "datasets" / "camvid"), help="CamVid root")
    p.add_argument("--config", default=str(ROOT / "configs" / "camvid_cpu.yaml"), help="structseg recipe")
    p.add_argument("--evals", type=int, default=6, help="evaluations per run (at equal training-time steps)")
    p.add_argument("--calibration-steps", type=int, default=12, help="steps timed to size train.iterations")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output folder")
    p.add_argument("--only", choices=["structseg", "peer"], help="run one side only")
    p.add_argument("--run-dir", default=str(ROOT / "runs" / "camvid_budget"),
                   help="structseg's run directory (kept: its checkpoint feeds the CRF, SSVM and classic benchmarks)")
    return p.parse_args()


def build_data(cfg):
    """The recipe's training set (preloaded, resized, augmented) and a preloaded evaluation set."""
    from structseg.engine.build import raw_dataset, build_train_dataset, eval_transform
    from structseg.engine.datasets import PreparedDataset

    train = build_train_dataset(cfg, progress=True)
    val = PreparedDataset(raw_dataset(cfg, cfg.data.val_split), preload=True, transform=eval_transform())
    return train, val


def evaluate(model, val, cfg, fast_path):
    from torch.utils.data import DataLoader

    from structseg.engine.evaluate import evaluate_model

    loader = DataLoader(val, batch_size=cfg.data.eval_batch_size)
    return evaluate_model(model, loader, val.classes.num_classes, ignore_index=val.classes.ignore_index,
                          cfg=cfg.eval, device="cpu", fast_path=fast_path)


def run_structseg(cfg, train, val, budget_s: float, evals: int, calib_steps: int, workdir: Path,
                  run_dir: Path) -> dict:
    """Time a few steps, size the run to the budget, train with the engine; curve from log.csv."""
    from structseg.engine.config import apply_overrides
    from structseg.engine.trainer import Trainer
    from structseg.viz.curves import read_log

    marks: list[float] = []

    def clock(trainer):
        marks.append(trainer.train_seconds)
        if len(marks) >= calib_steps:
            trainer.stop_requested = True

    probe = apply_overrides(cfg, ["train.progress=false", "train.iterations=100000", "train.eval_every=100000"])
    Trainer(probe, workdir / "calibration", train_set=train, val_set=val, hooks={"step_end": [clock]}).fit()
    steps = [b - a for a, b in zip(marks[2:], marks[3:])] or [marks[-1]]
    s_per_step = sorted(steps)[len(steps) // 2]
    # schedule.by_time makes the cosine follow the training clock, so it ends at the budget whatever the
    # machine's speed; the step estimate only sets the evaluation cadence, and iterations is a loose cap
    estimate = max(evals, int(budget_s / s_per_step))
    iterations = 2 * estimate
    print(f"structseg: {s_per_step:.3f} s/step measured -> about {estimate} steps in the budget")
    run_cfg = apply_overrides(cfg, [
        "schedule.by_time=true",
        f"train.iterations={iterations}", f"train.eval_every={max(1, estimate // evals)}",
        f"train.checkpoint_every={iterations}", f"train.max_minutes={budget_s / 60}",
        f"schedule.warmup_iters={min(cfg.schedule.warmup_iters, iterations // 10)}",
    ])
    shutil.rmtree(run_dir, ignore_errors=True)
    trainer = Trainer(run_cfg, run_dir, train_set=train, val_set=val)
    result = trainer.fit()
    rows = read_log(trainer.run.log)
    curve = [(r["seconds"] / 60, r["val_miou"]) for r in rows if "val_miou" in r]
    return {"curve": curve, "final": result.final_metrics, "iterations": result.iterations,
            "seconds_per_step": s_per_step, "train_seconds": result.seconds}


def run_peer(cfg, train, val, budget_s: float, evals: int) -> dict:
    """smp Unet-ResNet18 from random weights, AdamW 1e-3 constant, CE: a plain loop."""
    import segmentation_models_pytorch as smp
    from torch.utils.data import DataLoader

    from structseg.models.fastpath import select_fast_path
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.train.seed)
    fast = select_fast_path("cpu")
    model = fast.prepare(smp.Unet("resnet18", encoder_weights=None, classes=train.classes.num_classes))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=train.classes.ignore_index)
    loader = DataLoader(train, batch_size=cfg.data.batch_size, shuffle=True, drop_last=True,
                        num_workers=cfg.data.workers)
    every = budget_s / evals
    spent, next_eval, steps, curve, final = 0.0, every, 0, [], None
    bar = tqdm(total=round(budget_s), desc="peer (s)")
    while spent < budget_s:
        tick = time.perf_counter()
        for images, masks in loader:
            model.train()
            with fast.autocast("cpu"):
                out = model(fast.prepare_input(images))
            loss = loss_fn(out.float(), masks)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            now = time.perf_counter()
            spent += now - tick
            bar.update(min(round(spent), bar.total) - bar.n)
            if spent >= next_eval or spent >= budget_s:
                final = evaluate(model, val, cfg, fast)
                curve.append((spent / 60, final.miou))
                bar.write(f"peer: {spent / 60:.1f} min, {steps} steps, val mIoU {100 * final.miou:.2f}")
                next_eval += every
            if spent >= budget_s:
                break
            tick = time.perf_counter()
    bar.close()
    return {"curve": curve, "final": final, "iterations": steps, "seconds_per_step": spent / max(1, steps),
            "train_seconds": spent}


def plot(results: dict, path: Path, minutes: float) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=110)
    ax = fig.add_subplot()
    for name, res in results.items():
        xs, ys = zip(*res["curve"]) if res["curve"] else ((), ())
        ax.plot(xs, [100 * y for y in ys], marker="o", label=f"{name} (final {100 * ys[-1]:.1f})" if ys else name)
    ax.set_xlabel("training time (minutes)")
    ax.set_ylabel("val mIoU (%)")
    ax.set_title(f"CamVid from scratch on the CPU, {minutes:g}-minute budget")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main() -> int:
    args = parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from structseg.engine.config import apply_overrides, load_config

    if not Path(args.root).is_dir():
        print(f"CamVid not found at {args.root}", file=sys.stderr)
        return 1
    cfg = apply_overrides(load_config(args.config), [f"data.root={args.root}", "train.progress=true"])
    torch.manual_seed(cfg.train.seed)
    train, val = build_data(cfg)
    names = list(train.classes.names)
    budget_s = 60.0 * args.minutes
    results: dict[str, dict] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "structseg"):
            results["structseg camvid_cpu"] = run_structseg(cfg, train, val, budget_s, args.evals,
                                                            args.calibration_steps, Path(tmp),
                                                            Path(args.run_dir))
        if args.only in (None, "peer"):
            results["smp Unet-resnet18 (plain loop)"] = run_peer(cfg, train, val, budget_s, args.evals)

    print(f"\nval mIoU (%) against training minutes, budget {args.minutes:g} min each")
    for name, res in results.items():
        points = "  ".join(f"{m:5.1f}:{100 * v:5.1f}" for m, v in res["curve"])
        print(f"{name:32s} {res['seconds_per_step']:.3f} s/step  {res['iterations']:5d} steps  {points}")
    header = f"{'class':<12}" + "".join(f"{n[:24]:>26}" for n in results)
    print("\n" + header + "\n" + "-" * len(header))
    for i, cname in enumerate(names):
        cells = "".join(f"{100 * float(r['final'].iou[i]):26.2f}" for r in results.values())
        print(f"{cname:<12}{cells}")
    print(f"{'mIoU':<12}" + "".join(f"{100 * r['final'].miou:26.2f}" for r in results.values()))
    if len(results) == 2:
        a, b = (r["final"].miou for r in results.values())
        print(f"\nstructseg - peer: {100 * (a - b):+.2f} mIoU (target: at least +5)")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(results, out / "camvid_budget.png", args.minutes)
    payload = {
        "minutes": args.minutes,
        "config": args.config,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_at_start": load_before,
        "load_average_at_end": os.getloadavg(),
        "runs": {
            name: {"curve_minutes_miou": res["curve"], "iterations": res["iterations"],
                   "seconds_per_step": res["seconds_per_step"], "train_seconds": res["train_seconds"],
                   "final": res["final"].as_dict(names)}
            for name, res in results.items()
        },
    }
    (out / "camvid_budget.json").write_text(json.dumps(payload, indent=2))
    print(f"wrote {out / 'camvid_budget.json'} and {out / 'camvid_budget.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
