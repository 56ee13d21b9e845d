"""``structseg eval``: per-class metrics of a trained run on a data split."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from structseg.engine.commands._common import add_crf, add_model_source, add_set, add_tta

if TYPE_CHECKING:
    from structseg.engine.config import EvalConfig
    from structseg.engine.predict import Predictor


def configure(parser: argparse.ArgumentParser) -> None:
    add_model_source(parser)
    parser.add_argument("--split", help="data split (default: the config's data.val_split)")
    parser.add_argument("-o", "--out", help="metrics JSON (default: RUN_DIR/eval_<split>[_<variant>].json, the "
                                            "variant naming what departs from the run's eval settings: _latest, "
                                            "_slide, _flip, _s<scales>, _crf); a PNG beside it")
    parser.add_argument("--batch-size", type=int, help="evaluation batch size (default data.eval_batch_size)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_crf(parser)
    add_tta(parser)
    add_set(parser)


def variant_suffix(predictor: Predictor, own: EvalConfig) -> str:
    """How this evaluation departs from the run's own ``eval:`` settings (``own``), for its file name:
    ``_latest`` (another checkpoint than best), ``_slide``, ``_flip``, ``_s0.75-1-1.25`` (scales), ``_crf``;
    empty for the run's own evaluation, so each variant keeps its own file instead of overwriting one."""
    ev, parts = predictor.eval_cfg, []
    which = predictor.checkpoint.get("which", "best")
    if which != "best":
        parts.append(which)
    if ev.mode != own.mode:
        parts.append(ev.mode)
    if ev.flip and not own.flip:
        parts.append("flip")
    if list(ev.scales) != list(own.scales):
        parts.append("s" + "-".join(f"{s:g}" for s in ev.scales))
    if predictor.crf.mode != "none":
        parts.append("crf")
    return "".join(f"_{p}" for p in parts)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from torch.utils.data import DataLoader

    from structseg.engine.build import build_eval_dataset, check_classes
    from structseg.engine.commands._load import load_predictor
    from structseg.engine.config import EvalConfig
    from structseg.engine.evaluate import describe_crf
    from structseg.engine.pretrained import stored_config

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
    own = stored_config(root).eval if root is not None else EvalConfig()
    name = f"eval_{split}{variant_suffix(predictor, own)}.json"
    out = Path(args.out) if args.out else (root or Path(args.checkpoint).parent) / name
    json_path, png = predictor.write_evaluation(metrics, split, out)
    print(f"wrote {json_path} and {png}")
    return 0
