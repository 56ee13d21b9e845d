"""``structseg eval``: per-class metrics of a trained run on a data split."""
from __future__ import annotations

import argparse

from structseg.engine.commands._common import add_crf, add_model_source, add_set, add_tta


def configure(parser: argparse.ArgumentParser) -> None:
    add_model_source(parser)
    parser.add_argument("--split", help="data split (default: the config's data.val_split)")
    parser.add_argument("-o", "--out", help="metrics JSON (default: RUN_DIR/eval_<split>.json); a PNG beside it")
    parser.add_argument("--batch-size", type=int, help="evaluation batch size (default data.eval_batch_size)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_crf(parser)
    add_tta(parser)
    add_set(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from torch.utils.data import DataLoader

    from structseg.engine.build import build_eval_dataset, check_classes
    from structseg.engine.commands._load import load_predictor
    from structseg.engine.evaluate import describe_crf

    if args.crf:
        args.overrides = [*args.overrides, f"crf.mode={args.crf}"]
    predictor, cfg, root = load_predictor(args)
    split = args.split or cfg.data.val_split
    dataset = build_eval_dataset(cfg, split)
    check_classes(predictor.classes, dataset.classes, f"split '{split}'")
    loader = DataLoader(dataset, batch_size=args.batch_size or cfg.data.eval_batch_size,
                        num_workers=cfg.data.workers)
    metrics = predictor.evaluate(loader, progress=not args.no_progress, desc=f"eval {split}")
    print(metrics.table(list(predictor.classes.names)))
    print(describe_crf(predictor.crf))
    out = Path(args.out) if args.out else (root or Path(args.checkpoint).parent) / f"eval_{split}.json"
    json_path, png = predictor.write_evaluation(metrics, split, out)
    print(f"wrote {json_path} and {png}")
    return 0
