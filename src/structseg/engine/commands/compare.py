"""``structseg compare``: image | ground truth | model 1 | model 2 | ... [| SAM] in one figure."""
from __future__ import annotations

import argparse

import torch


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", nargs="+", required=True, metavar="RUN_DIR",
                        help="run directories (or exported pretrained directories) to compare")
    parser.add_argument("--images", nargs="+",
                        help="without --split: image files or directories (no ground truth); with --split: the "
                             "names (file stems) of the split's images to show")
    parser.add_argument("--split", help="take images and ground truth from this split of the first run's data")
    parser.add_argument("--count", type=int, default=4,
                        help="images taken from --split, evenly spaced (unless --images names them)")
    parser.add_argument("--names", nargs="+", help="column titles (default: the run directories' names)")
    parser.add_argument("--which", default="best", help="best | latest")
    parser.add_argument("-o", "--out", required=True, help="output PNG")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    sam = parser.add_argument_group("Segment Anything column (needs the segment_anything package and a checkpoint)")
    sam.add_argument("--sam", action="store_true",
                     help="add a last column of SAM's automatic masks, each segment named by majority vote")
    sam.add_argument("--sam-checkpoint", metavar="PATH",
                     help="SAM checkpoint (default: the official file of --sam-type in $STRUCTSEG_SAM_DIR "
                          "or ~/.cache/structseg/sam)")
    sam.add_argument("--sam-type", default="vit_b", help="vit_b | vit_l | vit_h (default: vit_b)")
    sam.add_argument("--sam-labels", choices=("auto", "truth", "model", "none"), default="auto",
                     help="who names SAM's segments: the ground truth (an oracle: SAM's segments with perfect "
                          "names), the first model's prediction, none (SAM's raw masks, one random color "
                          "each), or auto (truth with --split, else model)")
    sam.add_argument("--sam-points", type=int, default=32, help="SAM's point grid per image side (default: 32)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from structseg.data.io import read_image
    from structseg.engine.build import check_classes
    from structseg.engine.commands._common import expand_images
    from structseg.engine.predict import Predictor
    from structseg.engine.pretrained import is_pretrained_dir, stored_config
    from structseg.engine.rundir import existing_run
    from structseg.errors import ConfigError
    from structseg.viz.grid import GridRow, comparison_grid, spread_indices

    sam_labels = _check_sam_args(args)
    roots = [Path(r) if is_pretrained_dir(r) else existing_run(r).root for r in args.runs]
    names = args.names or [r.name for r in roots]
    if len(names) != len(roots):
        raise ConfigError(f"--names gives {len(names)} titles for {len(roots)} runs")
    predictors = [Predictor.from_run(r, args.which, device=args.device) for r in roots]
    classes = predictors[0].classes
    for name, p in zip(names[1:], predictors[1:]):
        check_classes(classes, p.classes, f"run {name}")

    items: list[tuple[torch.Tensor, torch.Tensor | None, str]] = []  # (uint8 image, truth or None, label)
    if args.split is None:
        if not args.images:
            raise ConfigError("give --split (images and truth from a split) or --images (files or directories)")
        for path in expand_images(args.images):
            items.append((read_image(path), None, path.name))
    else:
        from structseg.engine.build import raw_dataset

        if args.count <= 0:
            raise ConfigError(f"--count must be positive, got {args.count}")
        dataset = raw_dataset(stored_config(roots[0]), args.split)
        names_in_split = [Path(dataset.item_name(i)) for i in range(len(dataset))]
        if args.images:
            by_stem = {p.stem: i for i, p in enumerate(names_in_split)}
            by_name = {p.name: i for i, p in enumerate(names_in_split)}
            missing = [n for n in args.images if n not in by_stem and n not in by_name]
            if missing:
                raise ConfigError(f"--images: {', '.join(missing)} not in split {args.split!r} "
                                  f"(e.g. {', '.join(p.stem for p in names_in_split[:3])})")
            indices = [by_stem[n] if n in by_stem else by_name[n] for n in args.images]
        else:
            indices = spread_indices(len(dataset), args.count)
        for i in indices:
            image, mask = dataset.load(i)
            items.append((image, mask, names_in_split[i].name))
    rows = [GridRow(image=img, truth=truth, predictions=[p.predict(img) for p in predictors], name=label)
            for img, truth, label in items]
    if sam_labels is not None:
        from structseg.sam import sam_column

        if sam_labels == "auto":
            sam_labels = "truth" if args.split else "model"
        by_truth = sam_labels == "truth"
        column = sam_column(
            [img for img, _, _ in items], args.sam_checkpoint, args.sam_type,
            truth=[truth for _, truth, _ in items] if by_truth else None,
            prediction=[row.predictions[0] for row in rows] if sam_labels == "model" else None,
            num_classes=classes.num_classes, ignore_index=classes.ignore_index,
            points_per_side=args.sam_points, device=args.device,
        )
        for row, panel in zip(rows, column):
            row.predictions = [*row.predictions, panel]
        names = [*names, {"truth": "SAM (truth labels)", "none": "SAM (raw masks)"}.get(sam_labels,
                                                                                       f"SAM + {names[0]}")]
    out = comparison_grid(rows, names, classes.palette, args.out, class_names=list(classes.names),
                          ignore_index=classes.ignore_index, ignore_color=classes.ignore_color)
    print(f"wrote {out}")
    return 0


def _check_sam_args(args: argparse.Namespace) -> str | None:
    """The ``--sam-labels`` choice when ``--sam`` is on (None when off), after the cheap checks:
    the package, the model type and the checkpoint file, so that nothing heavy runs first."""
    from structseg.errors import ConfigError

    if not args.sam:
        if args.sam_checkpoint is not None:
            raise ConfigError("--sam-checkpoint is given without --sam; add --sam for the SAM column")
        return None
    if args.sam_labels == "truth" and not args.split:
        raise ConfigError("--sam-labels truth needs ground truth: take the images with --split instead of --images")
    if args.sam_points <= 0:
        raise ConfigError(f"--sam-points must be positive, got {args.sam_points}")
    from structseg.sam import check_sam

    check_sam(args.sam_checkpoint, args.sam_type)
    return None if args.sam_labels is None else str(args.sam_labels)
