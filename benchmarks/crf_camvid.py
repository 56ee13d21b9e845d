"""CRF refinement of the CamVid model on CamVid val: CNN, CNN + dense CRF, piecewise-trained CNN-CRF.

The model is the checkpoint of benchmarks/camvid_budget.py (``--run``, default runs/camvid_budget:
U-Net ResNet-18, evaluated with the run's ``eval`` section: full 360x480 labels, input at the
configured scales). Rows, all scored on the same val images at the label resolution:

- ``CNN``: the model's (test-time fused) softmax, argmax.
- ``CNN + dense CRF``: the engine's refiner (``structseg eval --crf dense``) on those probabilities,
  with the default pydensecrf parameters, and with bilateral parameters chosen by a small grid search
  on ``--tune-images`` *train* images (never val), at 5 and 10 mean-field iterations.
- ``CNN-CRF``: the CNN frozen; a :class:`structseg.crf.CNNCRF` (unary net + pairwise nets for the
  "surrounding" and "above/below" edge types) on a coarse grid (``--grid-stride``) of the frozen
  penultimate features concatenated with the CNN's log-probabilities, trained piecewise
  (:func:`structseg.crf.piecewise_loss`) on train images for ``--minutes``; inference by mean-field,
  upsampled bilinearly; also its unary alone and its output + the tuned dense CRF.

Per row: mIoU, pixel accuracy, mean class accuracy, seconds per image (the CNN forward included).
Prints a table, writes benchmarks/results/crf_camvid.json (per-class IoU too) and crf_camvid.png.

    python benchmarks/crf_camvid.py                       # all val images, 5 min CNN-CRF training
    python benchmarks/crf_camvid.py --limit-images 3 --minutes 0.2 --train-images 6 --tune-images 2 \\
        --run /tmp/crf_smoke_run --out /tmp/crf_smoke_out   # smoke run
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from _harness import RESULTS, ROOT, parser, print_table, write_json

ITERATIONS = (5, 10)
GRID = {"sxy_bilateral": (30.0, 50.0, 80.0), "srgb": (3.0, 5.0, 10.0, 13.0), "compat_bilateral": (3.0, 5.0, 10.0)}


def parse_args() -> argparse.Namespace:
    p = parser(__doc__, out=RESULTS)
    p.add_argument("--run", default=str(ROOT / "runs" / "camvid_budget"), help="run directory of the CamVid model")
    p.add_argument("--which", default="best", help="best | latest checkpoint of the run")
    p.add_argument("--root", help="CamVid root (default: the run config's data.root)")
    p.add_argument("--limit-images", type=int, default=0, help="val images, evenly spaced (0: all)")
    p.add_argument("--tune-images", type=int, default=8, help="train images for the dense-CRF grid search")
    p.add_argument("--train-images", type=int, default=0, help="train images for the CNN-CRF, evenly spaced (0: all)")
    p.add_argument("--minutes", type=float, default=5.0, help="CNN-CRF training budget (feature extraction excluded)")
    p.add_argument("--grid-stride", type=int, default=4, help="CNN-CRF grid: feature map pooled by this factor")
    p.add_argument("--hidden", type=int, default=64, help="hidden width of the CNN-CRF unary / pairwise nets")
    p.add_argument("--batch-size", type=int, default=8, help="CNN-CRF training batch")
    p.add_argument("--mf-iterations", type=int, default=10, help="CNN-CRF mean-field iterations")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    return p.parse_args()


def evenly_spaced(total: int, limit: int) -> list[int]:
    """``limit`` indices spread over ``range(total)`` (CamVid splits are video sequences); all when 0."""
    if limit <= 0 or limit >= total:
        return list(range(total))
    return np.linspace(0, total - 1, limit).round().astype(int).tolist()


def autocast(fast_path, device: torch.device):
    if fast_path is None or fast_path.autocast_dtype is None:
        return contextlib.nullcontext()
    return fast_path.autocast(device)


class CoarseInputs:
    """The CNN-CRF's node features: the frozen penultimate features and the CNN's log-probabilities
    at the first eval scale, average-pooled by ``stride`` to the coarse grid."""

    def __init__(self, model, scale: float, stride: int, fast_path) -> None:
        self.model, self.scale, self.stride, self.fast_path = model, scale, stride, fast_path

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        size = (max(1, round(h * self.scale)), max(1, round(w * self.scale)))
        xs = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if self.fast_path is not None and self.fast_path.channels_last:
            xs = xs.contiguous(memory_format=torch.channels_last)
        with autocast(self.fast_path, xs.device):
            out = self.model.forward_features(xs)
        feats = torch.cat([out["features"].float(), out["out"].float().log_softmax(1)], 1).contiguous()
        grid = (math.ceil(feats.shape[-2] / self.stride), math.ceil(feats.shape[-1] / self.stride))
        return F.adaptive_avg_pool2d(feats, grid)


def dense_cfg(**params):
    from structseg.engine.config import CRFConfig

    return CRFConfig(mode="dense", **params)


def tune_dense(predictor, train_set, indices: list[int]) -> dict:
    """Grid search of the bilateral kernel (5 iterations) by mIoU on train images."""
    from tqdm.auto import tqdm

    from structseg.engine.evaluate import build_refiner, infer
    from structseg.metrics import ConfusionMatrix

    k, ignore = predictor.classes.num_classes, predictor.classes.ignore_index
    cached = []
    with torch.inference_mode():
        for i in tqdm(indices, desc="tune: CNN on train images", leave=False):
            x, mask = train_set[i]
            x = x[None].to(predictor.device)
            cached.append((x, infer(predictor.model, x, predictor.eval_cfg, predictor.fast_path), mask[None]))
    base = ConfusionMatrix(k, ignore_index=ignore)
    for _, probs, mask in cached:
        base.update(probs.argmax(1).cpu(), mask)
    trials = []
    combos = list(itertools.product(*GRID.values()))
    for values in tqdm(combos, desc="tune: dense-CRF grid", leave=False):
        params = dict(zip(GRID, values))
        refiner = build_refiner(dense_cfg(iterations=ITERATIONS[0], **params))
        cm = ConfusionMatrix(k, ignore_index=ignore)
        for x, probs, mask in cached:
            cm.update(refiner(probs, x).argmax(1).cpu(), mask)
        trials.append({**params, "miou": cm.compute().miou})
    best = max(trials, key=lambda t: t["miou"])
    return {"images": indices, "cnn_miou": base.compute().miou, "iterations": ITERATIONS[0],
            "chosen": {name: best[name] for name in GRID}, "chosen_miou": best["miou"], "trials": trials}


def train_cnn_crf(coarse: CoarseInputs, train_set, indices: list[int], args, classes, device) -> tuple:
    """Piecewise training of the CNN-CRF on frozen coarse inputs of train images, for ``args.minutes``."""
    from tqdm.auto import tqdm

    from structseg.crf import CNNCRF, piecewise_loss
    from structseg.graph import downsample_labels

    k, ignore = classes.num_classes, classes.ignore_index
    feats, labels = [], []
    with torch.inference_mode():
        for i in tqdm(indices, desc="CNN-CRF: frozen features", leave=False):
            x, mask = train_set[i]
            f = coarse(x[None].to(device)).cpu()
            feats.append(f)
            labels.append(downsample_labels(mask[None], tuple(f.shape[-2:]), k, ignore))
    if len({tuple(f.shape) for f in feats}) != 1:
        sys.exit("crf_camvid: train images differ in size; the CNN-CRF batches need one size")
    feats, labels = torch.cat(feats).clone(), torch.cat(labels).clone()
    torch.manual_seed(0)
    crf = CNNCRF(feats.shape[1], k, hidden=args.hidden)
    opt = torch.optim.AdamW(crf.parameters(), lr=1e-3, weight_decay=1e-4)
    budget, spent, steps, epochs, history = args.minutes * 60.0, 0.0, 0, 0, []
    bar = tqdm(total=round(budget), desc="CNN-CRF: piecewise training (s)", leave=False)
    crf.train()
    while spent < budget:
        order = torch.randperm(len(feats))
        for start in range(0, len(order), args.batch_size):
            tick = time.perf_counter()
            idx = order[start : start + args.batch_size]
            f, y = feats[idx], labels[idx]
            if bool(torch.rand(()) < 0.5):
                f, y = f.flip(-1), y.flip(-1)
            loss, parts = piecewise_loss(crf(f), y, ignore_index=ignore)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            spent += time.perf_counter() - tick
            history.append({"step": steps, "seconds": spent, "loss": loss.item(), **parts})
            bar.update(min(round(spent), bar.total) - bar.n)
            bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
            if spent >= budget:
                break
        epochs += 1
    bar.close()
    crf.eval()
    info = {"train_images": len(feats), "grid": list(feats.shape[-2:]), "in_channels": feats.shape[1],
            "hidden": args.hidden, "steps": steps, "epochs_started": epochs, "train_seconds": spent,
            "final_loss": history[-1] if history else None,
            "loss_curve": history[:: max(1, len(history) // 50)]}
    return crf, info


def evaluate_rows(predictor, val_set, indices, dense_rows, crf, coarse, tuned_refiner, mf_iterations):
    """Confusion matrices and seconds per row over the val images (one image at a time)."""
    from tqdm.auto import tqdm

    from structseg.engine.evaluate import infer
    from structseg.metrics import ConfusionMatrix

    k, ignore = predictor.classes.num_classes, predictor.classes.ignore_index
    names = ["CNN", *dense_rows, "CNN-CRF unary only", "CNN-CRF mean-field", "CNN-CRF mean-field + dense CRF"]
    cms = {n: ConfusionMatrix(k, ignore_index=ignore) for n in names}
    seconds = dict.fromkeys(names, 0.0)
    example = None
    with torch.inference_mode():
        for j, i in enumerate(tqdm(indices, desc="val: all rows", leave=False)):
            x, mask = val_set[i]
            x, mask = x[None].to(predictor.device), mask[None]
            labels = {}

            tick = time.perf_counter()
            probs = infer(predictor.model, x, predictor.eval_cfg, predictor.fast_path)
            labels["CNN"] = probs.argmax(1).cpu()
            t_cnn = time.perf_counter() - tick
            seconds["CNN"] += t_cnn
            for name, refiner in dense_rows.items():
                tick = time.perf_counter()
                labels[name] = refiner(probs, x).argmax(1).cpu()
                seconds[name] += t_cnn + time.perf_counter() - tick

            tick = time.perf_counter()
            potentials = crf(coarse(x))
            t_pot = time.perf_counter() - tick
            unary = F.interpolate(potentials.unary.log_softmax(1), size=x.shape[-2:], mode="bilinear",
                                  align_corners=False)
            labels["CNN-CRF unary only"] = unary.argmax(1).cpu()
            seconds["CNN-CRF unary only"] += time.perf_counter() - tick
            tick = time.perf_counter()
            beliefs = crf.infer(potentials, "meanfield", iterations=mf_iterations)
            mf = F.interpolate(beliefs.clamp_min(1e-8).log(), size=x.shape[-2:], mode="bilinear",
                               align_corners=False).softmax(1)
            labels["CNN-CRF mean-field"] = mf.argmax(1).cpu()
            t_mf = t_pot + time.perf_counter() - tick
            seconds["CNN-CRF mean-field"] += t_mf
            tick = time.perf_counter()
            labels["CNN-CRF mean-field + dense CRF"] = tuned_refiner(mf, x).argmax(1).cpu()
            seconds["CNN-CRF mean-field + dense CRF"] += t_mf + time.perf_counter() - tick

            for name in names:
                cms[name].update(labels[name], mask)
            if j == len(indices) // 2:
                example = (i, x.cpu(), mask, labels)
    per_image = {n: seconds[n] / max(1, len(indices)) for n in names}
    return {n: cms[n].compute() for n in names}, per_image, example


def plot(rows: list[dict], example, classes, path: Path) -> None:
    """mIoU per row, and one val image: truth, CNN, CNN + tuned dense CRF, CNN-CRF + dense CRF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from structseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from structseg.viz.masks import colorize, denormalize

    shown = [n for n in ("CNN", "CNN + dense CRF, tuned, 5 it", "CNN-CRF mean-field + dense CRF") if n in example[3]]
    fig = plt.figure(figsize=(4 * (2 + len(shown)), 6.5))
    ax = fig.add_subplot(2, 1, 1)
    ax.barh([r["method"] for r in rows][::-1], [100 * r["miou"] for r in rows][::-1], color="tab:blue")
    ax.set_xlabel("val mIoU (%)")
    low = min(100 * r["miou"] for r in rows)
    ax.set_xlim(max(0.0, low - 5), max(100 * r["miou"] for r in rows) + 2)
    _, x, mask, labels = example
    panels = [("image", denormalize(x[0], IMAGENET_MEAN, IMAGENET_STD)),
              ("truth", colorize(mask[0], classes.palette, classes.ignore_index, classes.ignore_color))]
    panels += [(n, colorize(labels[n][0], classes.palette, classes.ignore_index, classes.ignore_color)) for n in shown]
    for c, (title, img) in enumerate(panels):
        a = fig.add_subplot(2, len(panels), len(panels) + c + 1)
        a.imshow(img)
        a.set_title(title, fontsize=9)
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
    args = parse_args()
    run_dir = Path(args.run)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "checkpoints").is_dir():
        print(f"crf_camvid: no trained run at {run_dir} (config.yaml and checkpoints/ needed). "
              "Train the CamVid model first: python benchmarks/camvid_budget.py", file=sys.stderr)
        return 2

    from structseg.engine.build import build_eval_dataset
    from structseg.engine.config import load_config
    from structseg.engine.evaluate import build_refiner, describe_crf
    from structseg.engine.predict import Predictor
    from structseg.engine.rundir import existing_run

    run = existing_run(run_dir)
    overrides = [f"data.root={args.root}"] if args.root else []
    cfg = load_config(run.config, overrides)
    if cfg.data.root and not Path(cfg.data.root).exists() and (ROOT / cfg.data.root).exists():
        cfg = load_config(run.config, [f"data.root={ROOT / cfg.data.root}"])  # relative to the repository
    predictor = Predictor.from_checkpoint(run.checkpoint(args.which), cfg, device=args.device)
    classes, names = predictor.classes, list(predictor.classes.names)
    val_set, train_set = build_eval_dataset(cfg, cfg.data.val_split), build_eval_dataset(cfg, cfg.data.train_split)
    val_idx = evenly_spaced(len(val_set), args.limit_images)
    tune_idx = evenly_spaced(len(train_set), args.tune_images)
    train_idx = evenly_spaced(len(train_set), args.train_images)
    print(f"model: {run.checkpoint(args.which)} on {predictor.device}; eval scales {cfg.eval.scales}, "
          f"flip {cfg.eval.flip}; {len(val_idx)} val images, {len(tune_idx)} train images for tuning, "
          f"{len(train_idx)} for the CNN-CRF")

    start = time.perf_counter()
    tuning = tune_dense(predictor, train_set, tune_idx)
    chosen = tuning["chosen"]
    print(f"dense CRF tuned on train: {chosen} (train mIoU {100 * tuning['cnn_miou']:.1f} -> "
          f"{100 * tuning['chosen_miou']:.1f})")
    default = dataclasses.asdict(dense_cfg())
    dense_rows = {f"CNN + dense CRF, default, {ITERATIONS[0]} it": build_refiner(dense_cfg(iterations=ITERATIONS[0]))}
    for it in ITERATIONS:
        dense_rows[f"CNN + dense CRF, tuned, {it} it"] = build_refiner(dense_cfg(iterations=it, **chosen))
    tuned_refiner = dense_rows[f"CNN + dense CRF, tuned, {ITERATIONS[0]} it"]

    coarse = CoarseInputs(predictor.model, cfg.eval.scales[0], args.grid_stride, predictor.fast_path)
    crf, crf_info = train_cnn_crf(coarse, train_set, train_idx, args, classes, predictor.device)
    crf = crf.to(predictor.device)
    print(f"CNN-CRF: {crf_info['steps']} piecewise steps in {crf_info['train_seconds']:.0f} s on a "
          f"{crf_info['grid'][0]}x{crf_info['grid'][1]} grid, final loss {crf_info['final_loss']['loss']:.3f}"
          if crf_info["final_loss"] else "CNN-CRF: no training step fitted the budget")

    metrics, per_image, example = evaluate_rows(predictor, val_set, val_idx, dense_rows, crf, coarse,
                                                tuned_refiner, args.mf_iterations)
    rows = [{"method": name, "miou": m.miou, "pixel_acc": m.pixel_acc, "mean_acc": m.mean_acc,
             "seconds_per_image": per_image[name]} for name, m in metrics.items()]

    print(f"\nCamVid {cfg.data.val_split}, {len(val_idx)} images at full label resolution")
    print_table(rows, [("method", "{method}"), ("mIoU", "{miou:.1%}"), ("pix acc", "{pixel_acc:.1%}"),
                       ("mean acc", "{mean_acc:.1%}"), ("s/img", "{seconds_per_image:.3f}")])
    cnn = metrics["CNN"].miou
    print("gain over the CNN (mIoU points): " + ", ".join(
        f"{r['method']}: {100 * (r['miou'] - cnn):+.2f}" for r in rows[1:]))
    print(f"tuned dense CRF ({describe_crf(dense_cfg(**chosen))}); total {time.perf_counter() - start:.0f} s")

    out = args.out
    summary = {
        "benchmark": "crf_camvid", "run": str(run.root), "checkpoint": args.which,
        "eval": dataclasses.asdict(cfg.eval), "split": cfg.data.val_split, "val_images": val_idx,
        "device": str(predictor.device), "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "dense_crf": {"default": default, "tuned": {**default, **chosen}, "tuning": tuning},
        "cnn_crf": {**crf_info, "feature_scale": cfg.eval.scales[0], "grid_stride": args.grid_stride,
                    "mean_field_iterations": args.mf_iterations, "minutes": args.minutes},
        "table": rows,
        "per_row": {name: m.as_dict(names) for name, m in metrics.items()},
    }
    write_json(out / "crf_camvid.json", summary)
    if example is not None:
        plot(rows, example, classes, out / "crf_camvid.png")
    print(f"wrote {out / 'crf_camvid.json'} and {out / 'crf_camvid.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
