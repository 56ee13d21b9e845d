"""``structseg predict``: coloured masks and overlays for image files."""
from __future__ import annotations

import argparse

from structseg.engine.commands._common import add_set, add_tta


def configure(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", metavar="RUN_DIR", help="a run directory written by structseg train")
    src.add_argument("--checkpoint", metavar="FILE", help="a checkpoint file (its stored config unless -c)")
    parser.add_argument("-c", "--config", help="config for --checkpoint (default: the one stored in it)")
    parser.add_argument("--which", default="best", help="best | latest | a checkpoint path (with --run)")
    parser.add_argument("images", nargs="+", help="image files or directories of images")
    parser.add_argument("-o", "--out", required=True, help="output directory")
    parser.add_argument("--alpha", type=float, default=0.5, help="mask opacity in the overlays")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    parser.add_argument("--crf", choices=["none", "dense"],
                        help="dense-CRF refinement of the probabilities (default: the config's crf.mode, none); "
                             "its parameters: --set crf.iterations=10 crf.srgb=5 ...")
    add_tta(parser)
    add_set(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from PIL import Image
    from tqdm.auto import tqdm

    from structseg.engine.commands._common import expand_images
    from structseg.engine.commands._load import load_predictor
    from structseg.engine.evaluate import describe_crf
    from structseg.engine.predict import read_rgb
    from structseg.viz.masks import colorize, image_to_hwc, overlay

    paths = expand_images(args.images)
    if args.crf:
        args.overrides = [*args.overrides, f"crf.mode={args.crf}"]
    predictor, _, _ = load_predictor(args)
    classes = predictor.classes
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in tqdm(paths, desc="predict" + (" +crf" if predictor.refiner else ""), leave=False):
        image = read_rgb(path)
        labels = predictor.predict(image)
        coloured = colorize(labels, classes.palette, classes.ignore_index, classes.ignore_color)
        Image.fromarray(coloured).save(out / f"{path.stem}_mask.png")
        Image.fromarray(overlay(image_to_hwc(image), coloured, args.alpha)).save(out / f"{path.stem}_overlay.png")
    print(f"wrote {2 * len(paths)} images to {out} ({describe_crf(predictor.crf)})")
    return 0
