"""``structseg compare``: image | ground truth | model 1 | model 2 | ... in one figure."""
from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", nargs="+", required=True, metavar="RUN_DIR", help="run directories to compare")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", nargs="+", help="image files or directories (no ground truth)")
    src.add_argument("--split", help="take images and ground truth from this split of the first run's data")
    parser.add_argument("--count", type=int, default=4, help="images taken from --split, evenly spaced")
    parser.add_argument("--names", nargs="+", help="column titles (default: the run directories' names)")
    parser.add_argument("--which", default="best", help="best | latest")
    parser.add_argument("-o", "--out", required=True, help="output PNG")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from structseg.engine.build import check_classes
    from structseg.engine.commands._common import expand_images
    from structseg.engine.config import load_config
    from structseg.engine.predict import Predictor, read_rgb
    from structseg.engine.rundir import existing_run
    from structseg.errors import ConfigError
    from structseg.viz.grid import GridRow, comparison_grid

    runs = [existing_run(r) for r in args.runs]
    names = args.names or [r.root.name for r in runs]
    if len(names) != len(runs):
        raise ConfigError(f"--names gives {len(names)} titles for {len(runs)} runs")
    predictors = [Predictor.from_run(r.root, args.which, device=args.device) for r in runs]
    classes = predictors[0].classes
    for name, p in zip(names[1:], predictors[1:]):
        check_classes(classes, p.classes, f"run {name}")

    items: list[tuple[object, object, str]] = []  # (uint8 image, truth or None, label)
    if args.images:
        for path in expand_images(args.images):
            items.append((read_rgb(path), None, path.name))
    else:
        from structseg.engine.build import raw_dataset

        if args.count <= 0:
            raise ConfigError(f"--count must be positive, got {args.count}")
        dataset = raw_dataset(load_config(runs[0].config), args.split)
        n = min(args.count, len(dataset))
        picks = sorted({round(i * (len(dataset) - 1) / max(1, n - 1)) for i in range(n)})
        for i in picks:
            image, mask = dataset.load(i)
            items.append((image, mask, Path(dataset.describe(i).split()[0]).name))
    rows = [GridRow(image=img, truth=truth, predictions=[p.predict(img) for p in predictors], name=label)
            for img, truth, label in items]
    out = comparison_grid(rows, names, classes.palette, args.out, class_names=list(classes.names),
                          ignore_index=classes.ignore_index)
    print(f"wrote {out}")
    return 0
