"""``structseg instance``: Mask R-CNN train / eval / predict.

    structseg instance train -c configs/instance_synthetic.yaml --set train.iterations=50
    structseg instance eval --run runs/instance_synthetic
    structseg instance predict --run runs/instance_synthetic a.png b.png -o out/
"""
from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    train = sub.add_parser("train", help="train Mask R-CNN from an instance config")
    train.add_argument("--config", "-c", type=Path, help="YAML instance config (task: instance)")
    train.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                       help="override config fields, e.g. --set train.iterations=50 data.batch_size=2 "
                            "(values are YAML)")
    train.add_argument("--run-dir", "--run", dest="run", type=Path,
                       help="run directory (default: the config's run_dir)")

    ev = sub.add_parser("eval", help="mask and box AP (COCO) of a trained run")
    ev.add_argument("--run-dir", "--run", dest="run", type=Path, required=True, help="run directory")
    ev.add_argument("--split", help="split to score (default: the config's val split)")
    ev.add_argument("--limit", type=int, help="score only the first N images")
    ev.add_argument("--which", choices=("best", "latest"), default="best", help="checkpoint (default: best)")
    ev.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")

    pr = sub.add_parser("predict", help="draw predicted instances on images")
    pr.add_argument("--run-dir", "--run", dest="run", type=Path, required=True, help="run directory")
    pr.add_argument("images", nargs="+", type=Path, help="image files")
    pr.add_argument("--out", "-o", type=Path, required=True, help="output folder")
    pr.add_argument("--threshold", type=float, help="minimum score drawn (default: the config's draw_threshold)")
    pr.add_argument("--which", choices=("best", "latest"), default="best", help="checkpoint (default: best)")
    pr.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")


def train_from_args(config: Path | None, overrides: list[str], run_dir: Path | None = None) -> int:
    """Entry point shared with ``structseg train`` for configs that say ``task: instance``."""
    import json

    from structseg.instance.coco import format_ap
    from structseg.instance.config import load_instance_config
    from structseg.instance.train import train_instance

    cfg = load_instance_config(config, overrides)
    run = train_instance(cfg, run_dir)
    metrics = json.loads((run / "metrics.json").read_text())
    if "segm" in metrics:
        print(format_ap({k: metrics[k] for k in ("segm", "bbox") if k in metrics}))
    print(f"run written to {run}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from structseg.classic.render import save_png
    from structseg.data.io import read_image
    from structseg.instance.draw import draw_instances
    from structseg.instance.train import load_run

    cfg, model, names = load_run(args.run, args.which, device=args.device)
    device = next(model.parameters()).device
    threshold = cfg.eval.draw_threshold if args.threshold is None else args.threshold
    args.out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for path in tqdm(args.images, desc="instance predict", unit="img"):
            image = read_image(path)
            (pred,) = model([image.to(device).float() / 255.0])
            picture = draw_instances(image, pred, names, score_threshold=threshold,
                                     mask_threshold=cfg.eval.mask_threshold)
            save_png(picture, args.out / f"{path.stem}_instances.png")
            kept = int((pred["scores"] >= threshold).sum())
            tqdm.write(f"{path}: {kept} instance(s) with score >= {threshold}")
    print(f"wrote {len(args.images)} PNGs to {args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "train":
        return train_from_args(args.config, args.overrides, args.run)
    if args.action == "eval":
        from structseg.instance.train import evaluate_run

        summary = evaluate_run(args.run, split=args.split, limit=args.limit, which=args.which, device=args.device)
        print(f"{summary['images']} images of split {summary['split']!r}; "
              f"wrote {args.run / ('eval_' + summary['split'] + '.json')}")
        return 0
    return _predict(args)
