"""Structured prediction on the pretrained CamVid network: which structured model beats the network alone.

Starts from a trained CamVid run (default: runs/camvid_budget_pretrained, what ``camvid_budget.py --pretrained``
leaves) and fills one table on CamVid val at the full 360x480 label resolution:

- the CNN alone; + dense CRF with default parameters; + dense CRF with the parameters ``structseg crf tune`` finds
  on training images (never val);
- CRF-as-RNN (``model.crf=meanfield``), Lin et al.'s CNN-CRF (``model.head=cnn_crf``), their CNN message
  estimators (``model.head=message_net``), a linear SVM head, SSVM with agreement and with full K x K pairwise
  terms (class-weighted), each fine-tuned from the run through the engine (``model.init_from``) for ``--minutes``
  of training (``schedule.by_time``); and the residual forms of the CNN-CRF and the message estimators
  (``model.cnn_crf.residual``: the frozen network's logits plus what the structured layer adds), and of the SVM
  heads (``model.structured.residual``; ssvm's MAP brought to label resolution by ``upsample=refine``); the residual
  CNN-CRF trained through its mean-field inference (``model.cnn_crf.training=meanfield``), alone, with the dense CRF
  and with a dense CRF tuned for it, and its ablation without pair scores (what the unary correction alone gives);
  the SSVM with contrast-sensitive Potts terms on the input's pixels (``pairwise=contrast``, ``grid=input``),
  class-weighted and unweighted, beside the residual SVM head trained the same way; the SSVM with the dense CRF's
  pairwise terms (``pairwise=dense``: crf tune's kernels, K x K penalties learnt, mean-field inference) over the
  frozen network's logits (unweighted and class-weighted Hamming loss) and with its residual unary layer learnt too,
  beside that unary layer alone (the linear SVM head) trained as long.

Each row: mIoU, pixel accuracy, per-class IoU, ms per image (inference, batch 1) and training minutes; the targets
of the structured-prediction issue are printed beside the rows. Writes benchmarks/results/structured_camvid.json
and a bar chart.

    python benchmarks/structured_camvid.py [--run runs/camvid_budget_pretrained] [--minutes 10] [--rows cnn,dense]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from _harness import RESULTS, ROOT, parser, print_table, write_json

# the residual SVM heads: the frozen network's logits plus what the head learns, on the 1/4-resolution grid
SVM_RES = ["model.structured.residual=true", "model.structured.train_backbone=false", "optim.lr=0.001",
           "model.structured.feature_stride=1"]
# the SSVM on the input's pixels: contrast-sensitive Potts terms, alpha-expansion, 10 min on 120x160 crops
SSVM_PX = [*SVM_RES, "model.head=ssvm", "model.structured.pairwise=contrast", "model.structured.grid=input",
           "model.structured.upsample=refine", "model.structured.solver=expansion",
           "model.structured.solver_options={truncate: true}", "data.crop_size=[120, 160]", "train.max_minutes=10"]
# the SSVM with the dense CRF's pairwise terms (crf tune's kernels, K x K penalties learnt) over the frozen logits
SSVM_DENSE = [*SVM_RES, "model.head=ssvm", "model.structured.pairwise=dense", "model.structured.grid=input",
              "data.class_weights=none", "train.max_minutes=10"]
# the CNN-CRF trained through its mean-field inference, residual on the frozen network
CNN_CRF_MF = ["model.head=cnn_crf", "model.cnn_crf.residual=true", "model.cnn_crf.training=meanfield",
              "model.cnn_crf.train_backbone=false", "optim.lr=0.002", "model.cnn_crf.feature_stride=2",
              "data.class_weights=none"]
# Hamming-loss scales tried for the pixel SSVM over the frozen network's logits (which are several logits apart)
MARGINS = (4,)
# row -> (description, overrides of the fine-tuning run; None: no training, the source run itself)
ROWS: dict[str, tuple[str, list[str] | None]] = {
    "cnn": ("CNN alone", None),
    "dense": ("+ dense CRF, default parameters", None),
    "tuned": ("+ dense CRF, parameters from crf tune (train images)", None),
    "crfrnn": ("CRF-as-RNN fine-tuned, unweighted cross-entropy", [
        "model.crf=meanfield", "optim.lr=0.01", "optim.backbone_lr_mult=0.001", "data.class_weights=none"]),
    "crfrnn_init": ("CRF-as-RNN before fine-tuning (the tuned parameters, at the network's input size)", None),
    "cnn_crf": ("Lin et al. CNN-CRF, mean-field", ["model.head=cnn_crf", "optim.lr=0.001",
                                                   "optim.backbone_lr_mult=0.0", "model.cnn_crf.feature_stride=2"]),
    "cnn_crf_dense": ("Lin et al. CNN-CRF, mean-field + dense CRF", None),  # tuned parameters when known
    "message_net": ("CNN message estimators", ["model.head=message_net", "optim.lr=0.001",
                                               "optim.backbone_lr_mult=0.0", "model.cnn_crf.feature_stride=2"]),
    "cnn_crf_res": ("CNN-CRF, residual on the frozen network, PMI pairs, mean-field", [
        "model.head=cnn_crf", "model.cnn_crf.residual=true", "model.cnn_crf.pairwise=pmi",
        "model.cnn_crf.train_backbone=false", "optim.lr=0.001", "model.cnn_crf.feature_stride=2"]),
    "cnn_crf_res_dense": ("CNN-CRF, residual, PMI pairs, mean-field + dense CRF", None),
    "cnn_crf_mf": ("CNN-CRF, residual on the frozen network, trained through mean-field, unweighted cross-entropy",
                   [*CNN_CRF_MF, "train.max_minutes=10"]),  # 3.2 s/step on AVX2: 10 min is ~190 steps
    "cnn_crf_mf_20": ("cnn_crf_mf trained for 20 minutes", [*CNN_CRF_MF, "train.max_minutes=20"]),
    "cnn_crf_mf_dense": ("CNN-CRF, residual, trained through mean-field + dense CRF", None),
    "cnn_crf_mf_tuned": ("CNN-CRF, residual, trained through mean-field + dense CRF tuned for it (train images)", None),
    "unary_res": ("ablation: the residual unary correction alone (cnn_crf_mf's recipe, pairwise weight 0, 4 min)", [
        "model.head=cnn_crf", "model.cnn_crf.residual=true", "model.cnn_crf.training=meanfield",
        "model.cnn_crf.pairwise_weight=0", "model.cnn_crf.train_backbone=false", "optim.lr=0.001",
        "model.cnn_crf.feature_stride=2", "data.class_weights=none"]),
    "message_net_res": ("CNN message estimators, residual on the frozen network, unweighted cross-entropy", [
        "model.head=message_net", "model.cnn_crf.residual=true", "model.cnn_crf.train_backbone=false",
        "optim.lr=0.001", "model.cnn_crf.feature_stride=2", "data.class_weights=none"]),
    "svm": ("linear SVM head", ["model.head=svm", "optim.lr=0.001", "optim.backbone_lr_mult=0.1"]),
    "ssvm": ("SSVM, agreement pairwise", ["model.head=ssvm", "optim.lr=0.001", "optim.backbone_lr_mult=0.1",
                                          "model.structured.feature_stride=2"]),
    "ssvm_full": ("SSVM, full K x K pairwise, class-weighted", [
        "model.head=ssvm", "model.structured.pairwise=full", "optim.lr=0.001", "optim.backbone_lr_mult=0.1",
        "model.structured.feature_stride=2", "data.class_weights=enet"]),
    "svm_res": ("linear SVM head, residual on the frozen network", [*SVM_RES, "model.head=svm"]),
    "ssvm_res": ("SSVM, agreement pairwise, residual on the frozen network, refine upsampling", [
        *SVM_RES, "model.head=ssvm", "model.structured.upsample=refine"]),
    "ssvm_px_res": ("SSVM, contrast-sensitive Potts on the input's pixels, residual on the frozen network, refine "
                    "upsampling (10 min on 120x160 crops)", SSVM_PX),
    "svm_res_unweighted": ("linear SVM head, residual on the frozen network, unweighted hinge", [
        *SVM_RES, "model.head=svm", "data.class_weights=none"]),
    "ssvm_px_res_unweighted": ("SSVM, contrast-sensitive Potts on the input's pixels, residual, unweighted Hamming "
                               "loss (10 min on 120x160 crops)", [*SSVM_PX, "data.class_weights=none"]),
    "ssvm_px_net": ("SSVM, contrast-sensitive Potts on the input's pixels over the frozen network's own logits (unary "
                    "layer fixed at 0), unweighted Hamming loss (10 min on 120x160 crops)", [
        *SSVM_PX, "data.class_weights=none", "model.structured.train_unary=false"]),
    "ssvm_px_net_weighted": ("ssvm_px_net with the class-weighted Hamming loss (ENet weights: a wrong pixel costs 3.3 "
                             "(road) to 44 (bicyclist) logits)", [
        *SSVM_PX, "data.class_weights=enet", "model.structured.train_unary=false"]),
    **{f"ssvm_px_net_m{m}": (f"ssvm_px_net with margin {m}: a wrong pixel costs {m} logits in the Hamming loss", [
        *SSVM_PX, "data.class_weights=none", "model.structured.train_unary=false", f"model.structured.margin={m}"])
       for m in MARGINS},
    "ssvm_px_net_edge_m4": ("ssvm_px_net_m4 without the constant reward a_c (only b_c exp(-|dI|^2 / 2 sigma^2) is "
                            "learnt)", [*SSVM_PX, "data.class_weights=none", "model.structured.train_unary=false",
                                        "model.structured.margin=4", "model.structured.contrast_constant=false"]),
    "ssvm_px_net_attractive": ("ssvm_px_net_edge_m4 with the rewards clipped at 0 (attractive: a Potts metric)", [
        *SSVM_PX, "data.class_weights=none", "model.structured.train_unary=false", "model.structured.margin=4",
        "model.structured.contrast_constant=false", "model.structured.attractive=true"]),
    "ssvm_dense_net": ("SSVM, dense CRF pairwise terms (crf tune's kernels, K x K penalties per kernel learnt from 0) "
                       "over the frozen network's logits (unary layer fixed at 0), mean-field inference, unweighted "
                       "Hamming loss, 10 min", [*SSVM_DENSE, "model.structured.train_unary=false"]),
    "ssvm_dense_net_weighted": ("ssvm_dense_net with the class-weighted Hamming loss (ENet weights times margin 0.15: "
                                "about 1 per wrong pixel on average, 0.5 for road, 6.6 for bicyclist)", [
        *SSVM_DENSE, "model.structured.train_unary=false", "data.class_weights=enet", "model.structured.margin=0.15"]),
    "svm_res_unweighted_10": ("svm_res_unweighted trained for 10 minutes (ssvm_dense_res's unary-only form)", [
        *SVM_RES, "model.head=svm", "data.class_weights=none", "train.max_minutes=10"]),
    "ssvm_dense_res": ("ssvm_dense_net with the residual unary layer learnt too (its unary-only form: "
                       "svm_res_unweighted_10), 10 min", SSVM_DENSE),
    "ssvm_dense_res_20": ("ssvm_dense_res trained for 20 minutes (svm_res_unweighted: 69.30 at 4 min, 69.24 at 10)", [
        *SSVM_DENSE, "train.max_minutes=20"]),
    "ssvm_full_res": ("SSVM, full K x K pairwise, class-weighted, residual on the frozen network, refine upsampling", [
        *SVM_RES, "model.head=ssvm", "model.structured.pairwise=full", "model.structured.upsample=refine",
        "data.class_weights=enet"]),
}
TARGETS = {"tuned": "+1.5 over the CNN", "crfrnn": ">= the tuned dense CRF's gain", "cnn_crf": "+1.0 over the CNN",
           "message_net": "+1.0 over the CNN, faster than cnn_crf", "cnn_crf_res": "+1.0 over the CNN",
           "cnn_crf_mf": "+1.0 over the CNN", "cnn_crf_mf_20": "+1.0 over the CNN",
           "message_net_res": "+1.0 over the CNN, faster than cnn_crf_res", "ssvm": "+1.0 over svm, >= CNN",
           "ssvm_full": "+1.0 over svm, >= CNN", "ssvm_res": "+1.0 over svm_res, >= CNN",
           "ssvm_full_res": "+1.0 over svm_res, >= CNN", "ssvm_px_res": "+1.0 over svm_res, >= CNN",
           "ssvm_px_res_unweighted": "+1.0 over svm_res_unweighted, >= CNN",
           "ssvm_px_net": "+1.0 over its unary-only form (the CNN), >= CNN",
           **{f"ssvm_px_net{s}": "+1.0 over its unary-only form (the CNN), >= CNN"
              for s in ("_weighted", *(f"_m{m}" for m in MARGINS), "_edge_m4", "_attractive")},
           "ssvm_dense_net": "+1.0 over its unary-only form (the CNN), >= CNN",
           "ssvm_dense_net_weighted": "+1.0 over its unary-only form (the CNN), >= CNN",
           "ssvm_dense_res": "+1.0 over svm_res_unweighted_10, >= CNN",
           "ssvm_dense_res_20": "+1.0 over svm_res_unweighted_10, >= CNN"}


def evaluate(predictor: Any, dataset: Any) -> dict[str, Any]:
    """Metrics on the whole split at label resolution and the mean inference time per image (batch 1)."""
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=1)
    start = time.perf_counter()
    with torch.inference_mode():
        metrics = predictor.evaluate(loader)
    seconds = time.perf_counter() - start
    names = list(predictor.classes.names)
    return {"metrics": metrics.as_dict(names), "miou": metrics.miou, "pixel_acc": metrics.pixel_acc,
            "ms_per_image": 1000 * seconds / len(dataset)}


def finetune(source: Path, overrides: list[str], minutes: float, run_dir: Path, root: str | None) -> float:
    """Train a route from ``source`` for ``minutes`` through the engine; returns the training minutes."""
    from structseg.engine.config import apply_overrides
    from structseg.engine.pretrained import stored_config
    from structseg.engine.trainer import Trainer

    cfg = apply_overrides(stored_config(source), [
        f"model.init_from={source}", f"train.max_minutes={minutes}", "schedule.by_time=true",
        "schedule.name=warmup_cosine", "schedule.warmup_iters=20", "train.iterations=100000",
        "train.eval_every=0", "train.checkpoint_every=0", "train.progress=true", "model.weights=null",
        *([f"data.root={root}"] if root else []), *overrides])
    result = Trainer(cfg, run_dir).fit()
    return result.seconds / 60


def main() -> int:
    p = parser(__doc__, out=RESULTS / "structured_camvid.json")
    p.add_argument("--run", type=Path, default=ROOT / "runs" / "camvid_budget_pretrained",
                   help="the trained CamVid run everything starts from")
    p.add_argument("--root", help="CamVid root (default: the run's data.root)")
    p.add_argument("--minutes", type=float, default=10.0, help="training minutes of each fine-tuned row")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    p.add_argument("--tune-images", type=int, default=20, help="training images crf tune scores")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "structured_camvid", help="fine-tuned runs go here")
    p.add_argument("--keep", action="store_true",
                   help="keep the rows already in --out (and their tuned CRF parameters); run only the others")
    args = p.parse_args()
    rows = args.rows.split(",")
    if set(rows) - set(ROWS):
        p.error(f"unknown rows {sorted(set(rows) - set(ROWS))}")
    if not (args.run / "checkpoints" / "best.pt").is_file():
        print(f"no trained run at {args.run}: run benchmarks/camvid_budget.py --pretrained first")
        return 1
    import shutil

    from structseg.engine.build import build_eval_dataset
    from structseg.engine.config import CRFConfig, apply_overrides
    from structseg.engine.crf_tune import tune_dense_crf
    from structseg.engine.predict import Predictor
    from structseg.engine.pretrained import stored_config

    cfg = stored_config(args.run)
    if args.root:
        cfg = apply_overrides(cfg, [f"data.root={args.root}"])
    val = build_eval_dataset(cfg)
    results: dict[str, dict[str, Any]] = {}
    tuned: dict[str, Any] | None = None
    if args.keep and args.out.is_file():
        import json

        results = {r: v for r, v in json.loads(args.out.read_text())["rows"].items() if r in rows}
        if "tuned" in results:
            tuned = {k: v for k, v in results["tuned"]["crf"].items() if k != "mode"}
        print(f"kept rows {', '.join(results) or 'none'} from {args.out}")
    for row in rows:
        if row in results:
            continue
        label, overrides = ROWS[row]
        print(f"== {row}: {label}", flush=True)
        minutes = 0.0
        crf = None
        if row == "dense":
            crf = CRFConfig(mode="dense")
        if row.endswith("_dense"):  # the network's tuned parameters when the tuned row ran (or was kept)
            crf = CRFConfig(mode="dense", **(tuned or {}))
            label += ", tuned parameters" if tuned else ", default parameters"
        if row == "tuned" or row.endswith("_tuned"):  # crf tune on the row's own run (train images)
            start = time.perf_counter()
            best = tune_dense_crf(args.run if row == "tuned" else args.work / row.removesuffix("_tuned"),
                                  images=args.tune_images).best
            minutes = (time.perf_counter() - start) / 60
            crf = CRFConfig(mode="dense", **best)
            if row == "tuned":
                tuned = best
        if overrides is not None:
            run_dir = args.work / row
            shutil.rmtree(run_dir, ignore_errors=True)
            if (row == "crfrnn" or row.startswith("ssvm_dense")) and tuned:  # the tuned kernels (and iterations)
                overrides = [*overrides, *(f"crf.{k}={v}" for k, v in tuned.items())]
            minutes = finetune(args.run, overrides, args.minutes, run_dir, args.root)
            source = run_dir
        else:
            source = (args.work / row.rsplit("_", 1)[0] if row.endswith(("_dense", "_tuned")) and row != "tuned"
                      else args.run)
        predictor = Predictor.from_run(source, crf=crf) if row != "crfrnn_init" else _untrained_crfrnn(args.run, tuned)
        results[row] = {"label": label, "training_minutes": minutes, **evaluate(predictor, val)}
        if crf is not None:
            results[row]["crf"] = vars(crf)
        print(f"   mIoU {100 * results[row]['miou']:.2f}, {results[row]['ms_per_image']:.0f} ms/image", flush=True)
        write_json(args.out, {"run": str(args.run), "minutes": args.minutes, "rows": results, "targets": TARGETS,
                              "complete": False})  # rows so far, should a later row fail
    results = {r: results[r] for r in ROWS if r in results}  # kept rows in the table's order
    base = results.get("cnn", {}).get("miou")
    table = [{"row": r, "label": v["label"], "miou": 100 * v["miou"], "pixel_acc": 100 * v["pixel_acc"],
              "gain": None if base is None else 100 * (v["miou"] - base), "ms": v["ms_per_image"],
              "minutes": v["training_minutes"], "target": TARGETS.get(r, "-")} for r, v in results.items()]
    print_table(table, [("row", "{row}"), ("mIoU %", "{miou:.2f}"), ("vs CNN", "{gain:+.2f}"),
                        ("pix acc %", "{pixel_acc:.2f}"), ("ms/img", "{ms:.0f}"), ("train min", "{minutes:.1f}"),
                        ("target", "{target}")])
    names = list(val.classes.names)
    print("\nper-class IoU %")
    print_table([{"row": r, **{n: 100 * (v["metrics"]["per_class"][n]["iou"] or 0) for n in names}}
                 for r, v in results.items()], [("row", "{row}")] + [(n[:8], f"{{{n}:.1f}}") for n in names])
    write_json(args.out, {"run": str(args.run), "minutes": args.minutes, "rows": results, "targets": TARGETS,
                          "complete": True})
    _plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out}")
    return 0


def _untrained_crfrnn(run: Path, tuned: dict[str, Any] | None) -> Any:
    """The run's network under a CRF-as-RNN layer with the tuned (else default) dense-CRF parameters, untrained."""
    from structseg.crf.layer import CRFRNN, MeanFieldCRF
    from structseg.engine.build import normalization
    from structseg.engine.config import CRFConfig
    from structseg.engine.predict import Predictor

    source = Predictor.from_run(run, crf=CRFConfig(mode="none"), prepare=False)
    mean, std = normalization(source.config)
    params = {k: v for k, v in vars(CRFConfig(mode="dense", **(tuned or {}))).items() if k not in ("mode", "threads")}
    model = CRFRNN(source.model, MeanFieldCRF(source.model.num_classes, mean=mean, std=std, **params))
    return Predictor(model, source.classes, eval_cfg=source.eval_cfg, config=source.config, crf=CRFConfig())


def _plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    """Horizontal bars of val mIoU, one readable row per table row, rows with a target in a darker colour."""
    from matplotlib.figure import Figure

    names = list(results)
    fig = Figure(figsize=(8, 1.5 + 0.24 * len(names)), dpi=110)
    ax = fig.subplots()
    colours = ["#1f5fa8" if n in TARGETS else "#8fbde8" for n in names]
    ax.barh(range(len(names)), [100 * results[n]["miou"] for n in names], color=colours)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("val mIoU (%), full label resolution")
    base = results.get("cnn", {}).get("miou")
    if base is not None:
        ax.axvline(100 * base, color="k", lw=0.8, ls="--", label=f"CNN alone ({100 * base:.2f})")
        ax.legend(loc="lower right")
        low = min(100 * r["miou"] for r in results.values())
        ax.set_xlim(max(0, low - 5), None)
    ax.set_title("dark: rows with a target (see the JSON's targets)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
