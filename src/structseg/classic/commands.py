"""``structseg classic``: segment images without training, or score a method on a labelled split.

    structseg classic --method kmeans -p k=6 a.png b.png -o out/
    structseg classic --method ncut --eval --layout camvid --root ../shared/datasets/camvid \\
        --split val --limit 20 --size 180 240 -o out/
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

METHOD_NAMES = ("kmeans", "kmeans_xy", "meanshift", "ncut")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="*", type=Path, help="images or folders of images to segment (not with --eval)")
    parser.add_argument("--method", "-m", default="kmeans", choices=METHOD_NAMES, help="segmentation method")
    parser.add_argument(
        "--param", "-p", action="append", default=[], metavar="KEY=VALUE",
        help="method parameter, e.g. -p k=6 -p position_weight=0.5 (repeatable)",
    )
    parser.add_argument("--out", "-o", type=Path, required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random segment colors")
    ev = parser.add_argument_group("evaluation against a labelled split")
    ev.add_argument("--eval", action="store_true", help="score the method on --layout/--root/--split")
    ev.add_argument("--layout", help="data-set layout (see structseg data)")
    ev.add_argument("--root", help="data-set root folder")
    ev.add_argument("--split", default="val", help="split to score (default: val)")
    ev.add_argument("--limit", type=int, default=None, help="score only the first N images")
    ev.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                    help="resize images (area) and truth (nearest) first")
    ev.add_argument("--figures", type=int, default=4, help="examples drawn in examples.png (default: 4)")


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["k=6", "color_space=rgb"]`` -> ``{"k": 6, "color_space": "rgb"}`` (values read as YAML scalars)."""
    import yaml

    from structseg.errors import ConfigError

    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"method parameter {item!r} is not KEY=VALUE")
        params[key.strip()] = yaml.safe_load(value)
    return params


def _segment_files(args: argparse.Namespace, params: dict[str, Any]) -> int:
    import time

    from tqdm import tqdm

    from structseg.classic.methods import segment
    from structseg.classic.render import colorize_segments, overlay_segments, save_png
    from structseg.data.io import read_image, require_unique_stems
    from structseg.engine.commands._common import expand_images
    from structseg.errors import ConfigError

    if not args.images:
        raise ConfigError("give images (files or folders) to segment, or --eval with --layout/--root/--split")
    paths = expand_images([str(p) for p in args.images])
    require_unique_stems(paths, "classic")  # outputs are named after the image
    args.out.mkdir(parents=True, exist_ok=True)
    for path in tqdm(paths, desc=f"classic {args.method}", unit="img"):
        image = read_image(path).permute(1, 2, 0).numpy()
        start = time.perf_counter()
        segments = segment(image, args.method, **params)
        seconds = time.perf_counter() - start
        colors = colorize_segments(segments, args.seed)
        stem = path.stem
        save_png(segments, args.out / f"{stem}_ids.png")
        save_png(colors, args.out / f"{stem}_segments.png")
        save_png(overlay_segments(image, colors, segments), args.out / f"{stem}_overlay.png")
        tqdm.write(f"{path}: {int(segments.max()) + 1} segments, {seconds:.3f} s")
    print(f"wrote {3 * len(paths)} PNGs to {args.out}")
    return 0


def _evaluate(args: argparse.Namespace, params: dict[str, Any]) -> int:
    import json

    from structseg.classic.evaluate import evaluate_classic, example_figure
    from structseg.data import build_dataset
    from structseg.errors import ConfigError

    if args.images:
        raise ConfigError("--eval scores a data set; do not also give image files")
    if not args.layout:
        raise ConfigError("--eval needs --layout (and usually --root)")
    dataset = build_dataset(args.layout, args.root, args.split)
    result = evaluate_classic(
        dataset, args.method, params, limit=args.limit,
        size=tuple(args.size) if args.size else None, keep=args.figures,
    )
    names = list(dataset.classes.names)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = result.as_dict(names)
    summary.update(layout=args.layout, split=args.split, size=args.size)
    (args.out / "metrics.json").write_text(json.dumps(summary, indent=2))
    with open(args.out / "per_image.csv", "w") as f:
        f.write("name,seconds,segments\n")
        for name, s, k in zip(result.names, result.seconds, result.segments):
            f.write(f'"{name}",{s:.4f},{k}\n')
    example_figure(result, dataset.classes.palette, args.out / "examples.png", dataset.classes.ignore_color)
    print(result.metrics.table(names))
    print(
        f"{args.method}: {len(result.seconds)} images, {result.seconds_per_image:.3f} s/image, "
        f"{result.segments_per_image:.1f} segments/image (majority-class labeling from the truth)"
    )
    print(f"wrote {args.out / 'metrics.json'}, per_image.csv, examples.png")
    return 0


def run(args: argparse.Namespace) -> int:
    params = parse_params(args.param)
    return _evaluate(args, params) if args.eval else _segment_files(args, params)
