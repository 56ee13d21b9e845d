"""CamVid val: the CNN alone vs a linear SVM head vs a structured SVM head on its frozen features.

The CNN is the checkpoint of a run directory (default ``runs/camvid_budget``, written by
benchmarks/camvid_budget.py: U-Net on ResNet-18 trained at 180x240 by configs/camvid_cpu.yaml),
loaded with the engine's :class:`~structseg.engine.predict.Predictor` and frozen.

1. CNN alone: the engine's evaluation (:func:`structseg.engine.evaluate.evaluate_model`) with the
   run's ``eval`` section (one scale: 0.5 for camvid_cpu, i.e. 180x240 input, 360x480 labels).
2. The penultimate features (``forward_features``) of every train and val image, computed once at
   that scale and cached in RAM. unet_resnet's feature map is at full input resolution (180x240 =
   43,200 nodes), too big a grid for loss-augmented inference at every step, so the features are
   average-pooled by ``--stride`` (default 4: a 45x60 grid) - for both heads, so that they see the
   same data and differ only in the pairwise terms. The truth is brought to that grid by majority
   vote (``StructuredSVMHead.truth_at``); cells with under half labelled pixels are ignored.
3. Linear SVM head (Crammer-Singer hinge) and structured SVM head (unary + agreement pairwise on the
   4-connected grid, structured hinge, loss-augmented inference by ``--solver``, default bp), both
   built by the engine's ``model.head: svm | ssvm`` wiring (:func:`structseg.engine.heads.build_structured`),
   both initialised from the CNN's own 1x1 classifier (``--init cnn``; pooled features through it give
   the pooled CNN logits, so training starts from the CNN's answer and the ssvm's pairwise terms
   from zero), each trained with Adam for the same wall-clock budget (``--minutes``, cosine-decayed
   learning rate; ``--iterations`` caps the steps instead or too).
4. All on CamVid val at full label resolution (360x480) with structseg.metrics.ConfusionMatrix, as
   the engine's eval: svm scores bilinearly upsampled then argmax; ssvm MAP labels on the grid
   (``--eval-solver``, default the training solver), nearest-upsampled. "ssvm unary only" is the
   trained ssvm's unary argmax (its pairwise terms dropped; row "SSVM unary only"): what the pairwise terms add.

Inference time per image = the CNN's forward at the eval scale (which gives logits and features
alike) + the head's inference; image decoding excluded. Training time counts optimisation only
(features are cached).

    python benchmarks/camvid_budget.py --only structseg         # first: the CNN of runs/camvid_budget
    python benchmarks/ssvm_camvid.py                            # 3 minutes per head
    python benchmarks/ssvm_camvid.py --run /tmp/run --limit-images 4 --minutes 0.2   # smoke test

Prints a table and writes benchmarks/results/ssvm_camvid.json.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any

import torch

from _harness import RESULTS, ROOT, apply_threads, parser, print_table, write_json


def parse_args() -> argparse.Namespace:
    p = parser(__doc__, out=RESULTS, threads=True)
    p.add_argument("--run", default=str(ROOT / "runs" / "camvid_budget"), help="run directory of the CNN")
    p.add_argument("--which", default="best", help="best | latest checkpoint of --run")
    p.add_argument("--root", help="CamVid root (default: the run config's data.root)")
    p.add_argument("--minutes", type=float, default=3.0, help="training budget of each head (wall clock)")
    p.add_argument("--iterations", type=int, help="at most this many steps per head (default: budget only)")
    p.add_argument("--solver", default="bp", help="loss-augmented inference in ssvm training (bp, expansion, icm, ...)")
    p.add_argument("--eval-solver", help="MAP inference at evaluation (default: --solver)")
    p.add_argument("--solver-options", default="{}",
                   help="YAML/JSON options for both solvers, e.g. '{max_iter: 50}' (bp); "
                   "expansion needs '{truncate: true}' once learned pairwise terms turn repulsive")
    p.add_argument("--stride", type=int, default=4, help="average-pool the features by this factor (both heads)")
    p.add_argument("--pairwise", choices=["agreement", "full"], default="agreement", help="ssvm pairwise form")
    p.add_argument("--connectivity", type=int, choices=[4, 8], default=4, help="ssvm grid neighbourhood")
    p.add_argument("--init", choices=["cnn", "random"], default="cnn", help="heads start from the CNN's classifier")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (cosine-decayed over the budget)")
    p.add_argument("--batch-size", type=int, default=8, help="images per head training step")
    p.add_argument("--limit-images", type=int, help="use only the first N train and N val images (smoke tests)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def load_cnn(args: argparse.Namespace):
    """The frozen CNN of ``--run`` as a Predictor; a clear exit when the run is missing."""
    from structseg.engine.predict import Predictor
    from structseg.engine.rundir import RunDir

    run = RunDir(args.run)
    if not run.config.is_file() or not (run.best.is_file() or run.latest.is_file()):
        sys.exit(f"no trained CNN in {run.root} (needs config.yaml and checkpoints/best.pt or latest.pt): "
                 "run `python benchmarks/camvid_budget.py --only structseg` first (or pass --run RUN_DIR)")
    predictor = Predictor.from_run(run.root, args.which, device="cpu")
    if predictor.config is not None and predictor.config.model.head != "softmax":
        sys.exit(f"{run.root} holds a model.head={predictor.config.model.head} run; give a softmax CNN")
    predictor.model.eval().requires_grad_(False)
    return predictor


def eval_scale(predictor) -> float:
    """The run's single evaluation scale (TTA cannot be applied to MAP labels: the first scale, no flip)."""
    e = predictor.eval_cfg
    if e.mode != "whole" or e.flip or len(e.scales) != 1:
        print(f"note: the run's eval section (mode {e.mode}, flip {e.flip}, scales {e.scales}) is reduced to "
              f"whole-image, scale {e.scales[0]}, no flip for every method")
    return float(e.scales[0])


def datasets(cfg, root: str | None, limit: int | None):
    from torch.utils.data import Subset

    from structseg.engine.build import eval_transform, raw_dataset
    from structseg.engine.config import apply_overrides
    from structseg.engine.datasets import PreparedDataset

    if root:
        cfg = apply_overrides(cfg, [f"data.root={root}"])
    out = []
    for split in (cfg.data.train_split, cfg.data.val_split):
        ds = PreparedDataset(raw_dataset(cfg, split), transform=eval_transform(cfg))
        out.append(Subset(ds, range(min(limit, len(ds)))) if limit else ds)
    return out[0], out[1]


def build_head(kind: str, base, num_classes: int, ignore_index: int, args: argparse.Namespace, options: dict):
    """A StructuredSegmenter around the frozen CNN, built by the engine's ``model.head`` wiring."""
    from structseg.engine.config import ModelConfig, StructuredHeadConfig
    from structseg.engine.heads import build_structured

    structured = StructuredHeadConfig(feature_stride=args.stride, pairwise=args.pairwise,
                                      connectivity=args.connectivity, solver=args.solver,
                                      eval_solver=args.eval_solver, solver_options=options)
    model = build_structured(base, ModelConfig(head=kind, structured=structured), num_classes, ignore_index)
    classifier = getattr(base, "classifier", None)
    unary = model.head.classifier if kind == "svm" else model.head.unary
    if args.init == "cnn":
        if not isinstance(classifier, torch.nn.Conv2d) or classifier.weight.shape != unary.weight.shape:
            sys.exit("--init cnn needs the CNN's classifier to be a 1x1 convolution on its penultimate features")
        with torch.no_grad():
            unary.weight.copy_(classifier.weight.float())
            unary.bias.copy_(classifier.bias.float())
    return model


@torch.no_grad()  # not inference mode: the cached features feed autograd later
def extract(segmenter, dataset, scale: float, fast_path, desc: str, keep_masks: bool):
    """Pooled features (N, C, h, w) float32, the truth on that grid (N, h, w), full-resolution masks
    (N, H, W) uint8 when ``keep_masks``, and the CNN's seconds per image."""
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    feats, truths, masks, seconds = [], [], [], 0.0
    for i in tqdm(range(len(dataset)), desc=desc, leave=False):
        image, mask = dataset[i]
        h, w = image.shape[-2:]
        x = image[None]
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        tick = time.perf_counter()
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if fast_path.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with fast_path.autocast("cpu"):
            f = segmenter.features(x)
        feats.append(f.float().contiguous())
        seconds += time.perf_counter() - tick
        truths.append(segmenter.head.truth_at(mask[None].long(), tuple(f.shape[-2:]))[0].to(torch.uint8))
        if keep_masks:
            masks.append(mask.to(torch.uint8))
    return (torch.cat(feats), torch.stack(truths).long(), torch.stack(masks) if keep_masks else None,
            seconds / max(1, len(dataset)))


def train_head(model, feats: torch.Tensor, truth: torch.Tensor, args: argparse.Namespace, name: str) -> dict:
    """Adam on the head alone, cosine lr over the wall-clock budget (or the step cap); returns the log."""
    from tqdm.auto import tqdm

    head = model.head
    head.train()
    opt = torch.optim.Adam(head.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    budget = 60.0 * args.minutes
    cap = args.iterations or math.inf
    n = len(feats)
    order, pos, steps, spent, losses = torch.randperm(n, generator=gen), 0, 0, 0.0, []
    bar = tqdm(total=round(budget), desc=f"train {name} (s)", leave=False)
    while spent < budget and steps < cap:
        tick = time.perf_counter()
        progress = max(spent / budget, steps / cap if math.isfinite(cap) else 0.0)
        for group in opt.param_groups:
            group["lr"] = args.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if pos + args.batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + args.batch_size]
        pos += args.batch_size
        loss = head.loss(feats[idx], truth[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        spent += time.perf_counter() - tick
        losses.append(loss.item())
        bar.update(min(round(spent), bar.total) - bar.n)
    bar.close()
    head.eval()
    every = max(1, len(losses) // 20)
    return {"iterations": steps, "train_seconds": spent, "epochs": steps * args.batch_size / n,
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "loss_curve": [(i + 1, sum(losses[i : i + every]) / len(losses[i : i + every]))
                           for i in range(0, len(losses), every)]}


@torch.no_grad()
def evaluate_head(model, feats: torch.Tensor, masks: torch.Tensor, num_classes: int, ignore_index: int,
                  batch: int, unary_only: bool = False):
    """Metrics at full label resolution, and head seconds per image."""
    import torch.nn.functional as F

    from structseg.metrics import ConfusionMatrix

    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    size = tuple(masks.shape[-2:])
    seconds = 0.0
    for s in range(0, len(feats), batch):
        f = feats[s : s + batch]
        tick = time.perf_counter()
        if unary_only:
            scores = F.interpolate(model.head(f), size=size, mode="bilinear", align_corners=False)
            labels = scores.argmax(1)
        else:
            opts = {"solver": model.eval_solver} if getattr(model, "eval_solver", None) else {}
            labels = model.head.predict(f, size=size, **opts)
        seconds += time.perf_counter() - tick
        cm.update(labels, masks[s : s + batch].long())
    return cm.compute(), seconds / max(1, len(feats))


def main() -> int:
    args = parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import yaml
    from torch.utils.data import DataLoader

    from structseg.engine.config import EvalConfig
    from structseg.engine.evaluate import evaluate_model

    apply_threads(args)
    torch.manual_seed(args.seed)
    options = yaml.safe_load(args.solver_options) or {}
    if not isinstance(options, dict):
        sys.exit(f"--solver-options must be a mapping, got {args.solver_options!r}")
    predictor = load_cnn(args)
    cfg, classes, fast = predictor.config, predictor.classes, predictor.fast_path
    k, ignore = classes.num_classes, classes.ignore_index
    names = list(classes.names)
    scale = eval_scale(predictor)
    train_set, val_set = datasets(cfg, args.root, args.limit_images)
    load_before = os.getloadavg()
    print(f"CNN: {cfg.model.name}/{cfg.model.backbone} from {predictor.config.run_dir or args.run}; "
          f"{len(train_set)} train / {len(val_set)} val images, eval scale {scale}")

    rows: dict[str, dict[str, Any]] = {}
    eval_cfg = EvalConfig(mode="whole", scales=[scale])
    tick = time.perf_counter()
    cnn = evaluate_model(predictor.model, DataLoader(val_set, batch_size=1), k, ignore_index=ignore,
                         cfg=eval_cfg, fast_path=fast, progress=True, desc="CNN alone")
    rows["CNN alone"] = {"metrics": cnn, "train_seconds": 0.0, "iterations": 0,
                         "engine_eval_s_per_image": (time.perf_counter() - tick) / len(val_set)}

    svm = build_head("svm", predictor.model, k, ignore, args, options)
    ssvm = build_head("ssvm", predictor.model, k, ignore, args, options)
    train_f, truth, _, _ = extract(ssvm, train_set, scale, fast, "train features", keep_masks=False)
    val_f, _, val_m, cnn_s = extract(ssvm, val_set, scale, fast, "val features", keep_masks=True)
    grid = tuple(train_f.shape[-2:])
    rows["CNN alone"]["infer_s_per_image"] = cnn_s  # the same forward pass gives the logits
    print(f"features: {tuple(train_f.shape[1:])} per image (stride {args.stride} of the {scale}x input); "
          f"{100 * float((truth == ignore).float().mean()):.1f}% of grid cells ignored")

    for name, model in (("linear SVM", svm), ("structured SVM", ssvm)):
        log = train_head(model, train_f, truth, args, name)
        metrics, head_s = evaluate_head(model, val_f, val_m, k, ignore, args.batch_size)
        rows[name] = {"metrics": metrics, **log, "infer_s_per_image": cnn_s + head_s, "head_s_per_image": head_s}
        print(f"{name}: {log['iterations']} steps ({log['epochs']:.2f} epochs) in {log['train_seconds']:.0f} s, "
              f"loss {log['loss_first']:.4f} -> {log['loss_last']:.4f}; val mIoU {100 * metrics.miou:.2f}")
    metrics, head_s = evaluate_head(ssvm, val_f, val_m, k, ignore, args.batch_size, unary_only=True)
    rows["SSVM unary only"] = {"metrics": metrics, "train_seconds": rows["structured SVM"]["train_seconds"],
                                          "iterations": rows["structured SVM"]["iterations"],
                                          "infer_s_per_image": cnn_s + head_s, "head_s_per_image": head_s}

    print()
    print_table([{"method": name, **r} for name, r in rows.items()],
                [("method", "{method}"), ("mIoU", "{metrics.miou:.2%}"), ("pix acc", "{metrics.pixel_acc:.2%}"),
                 ("mean acc", "{metrics.mean_acc:.2%}"), ("train s", "{train_seconds:.1f}"),
                 ("steps", "{iterations:d}"), ("infer s/img", "{infer_s_per_image:.3f}")])
    print(f"\nheads on {grid[0]}x{grid[1]} grids (features average-pooled by {args.stride}), init {args.init}, "
          f"solver {args.solver} / eval {args.eval_solver or args.solver} {options or ''}; "
          f"budget {args.minutes:g} min{f', at most {args.iterations} steps' if args.iterations else ''} each")
    cls_header = f"{'class':<12}" + "".join(f"{n[:15]:>17}" for n in rows)
    print("\n" + cls_header + "\n" + "-" * len(cls_header))
    for i, cname in enumerate(names):
        print(f"{cname:<12}" + "".join(f"{100 * float(r['metrics'].iou[i]):17.2f}" for r in rows.values()))

    payload = {
        "run": str(args.run), "checkpoint": args.which, "eval_scale": scale, "grid": list(grid),
        "train_images": len(train_set), "val_images": len(val_set),
        "args": {k_: v for k_, v in vars(args).items() if k_ not in ("out",)},
        "solver_options": options, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "load_average_at_start": load_before, "load_average_at_end": os.getloadavg(),
        "methods": {
            name: {**{k_: v for k_, v in r.items() if k_ != "metrics"}, **r["metrics"].as_dict(names)}
            for name, r in rows.items()
        },
    }
    path = write_json(args.out / "ssvm_camvid.json", payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
