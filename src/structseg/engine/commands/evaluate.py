"""``structseg eval``: per-class metrics of a trained run on a data split."""
from __future__ import annotations

import argparse

from structseg.engine.commands._common import add_set, add_tta


def configure(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", metavar="RUN_DIR", help="a run directory written by structseg train")
    src.add_argument("--checkpoint", metavar="FILE", help="a checkpoint file (its stored config unless -c)")
    parser.add_argument("-c", "--config", help="config for --checkpoint (default: the one stored in it)")
    parser.add_argument("--which", default="best", help="best | latest | a checkpoint path (with --run)")
    parser.add_argument("--split", help="data split (default: the config's data.val_split)")
    parser.add_argument("-o", "--out", help="metrics JSON (default: RUN_DIR/eval_<split>.json); a PNG beside it")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    parser.add_argument("--batch-size", type=int, help="evaluation batch size (default data.eval_batch_size)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--crf", choices=["none", "dense"],
                        help="dense-CRF refinement of the probabilities (default: the config's crf.mode, none); "
                             "its parameters: --set crf.iterations=10 crf.srgb=5 ...")
    add_tta(parser)
    add_set(parser)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from torch.utils.data import DataLoader

    from structseg.engine.build import build_eval_dataset, check_classes
    from structseg.engine.commands._load import load_predictor
    from structseg.engine.evaluate import describe_crf, evaluate_model
    from structseg.metrics.plots import plot_confusion

    if args.crf:
        args.overrides = [*args.overrides, f"crf.mode={args.crf}"]
    predictor, cfg, root = load_predictor(args)
    split = args.split or cfg.data.val_split
    dataset = build_eval_dataset(cfg, split)
    check_classes(predictor.classes, dataset.classes, f"split '{split}'")
    loader = DataLoader(dataset, batch_size=args.batch_size or cfg.data.eval_batch_size,
                        num_workers=cfg.data.workers)
    metrics = evaluate_model(predictor.model, loader, predictor.classes.num_classes,
                             ignore_index=predictor.classes.ignore_index, cfg=predictor.eval_cfg,
                             device=predictor.device, fast_path=predictor.fast_path,
                             progress=not args.no_progress, crf=predictor.refiner,
                             desc=f"eval {split}" + (" +crf" if predictor.refiner else ""))
    names = list(predictor.classes.names)
    print(metrics.table(names))
    print(describe_crf(predictor.crf))
    out = Path(args.out) if args.out else (root or Path(args.checkpoint).parent) / f"eval_{split}.json"
    result = {"split": split, "eval": vars(predictor.eval_cfg), "crf": vars(predictor.crf), **metrics.as_dict(names)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    png = plot_confusion(metrics.confusion, names, out.with_suffix(".png"), title=f"confusion, {split}")
    print(f"wrote {out} and {png}")
    return 0
