"""``structseg predict``: colored masks and overlays for image files."""
from __future__ import annotations

import argparse

from structseg.engine.commands._common import add_crf, add_model_source, add_set, add_tta


def configure(parser: argparse.ArgumentParser) -> None:
    add_model_source(parser)
    parser.add_argument("images", nargs="+", help="image files or directories of images")
    parser.add_argument("-o", "--out", required=True, help="output directory")
    parser.add_argument("--alpha", type=float, default=0.5, help="mask opacity in the overlays")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip images that cannot be read, write the others and list the skipped at the end "
                             "(exit status 1); without it the first bad image stops the command, named")
    add_crf(parser)
    add_tta(parser)
    add_set(parser)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from PIL import Image
    from tqdm.auto import tqdm

    from structseg.data.io import read_image, require_unique_stems
    from structseg.engine.commands._common import expand_images
    from structseg.engine.commands._load import load_predictor
    from structseg.engine.evaluate import describe_crf
    from structseg.errors import DataError
    from structseg.viz.masks import colorize, image_to_hwc, overlay

    paths = expand_images(args.images)
    require_unique_stems(paths, "predict")  # outputs are named <stem>_mask.png, <stem>_overlay.png
    if args.crf:
        args.overrides = [*args.overrides, f"crf.mode={args.crf}"]
    predictor, _, _ = load_predictor(args)
    classes = predictor.classes
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skipped: list[str] = []
    for path in tqdm(paths, desc="predict" + (" +crf" if predictor.refiner else ""), leave=False):
        try:
            image = read_image(path)
        except DataError as exc:
            if not args.skip_bad:
                raise
            skipped.append(str(exc))
            continue
        labels = predictor.predict(image)
        colored = colorize(labels, classes.palette, classes.ignore_index, classes.ignore_color)
        Image.fromarray(colored).save(out / f"{path.stem}_mask.png")
        Image.fromarray(overlay(image_to_hwc(image), colored, args.alpha)).save(out / f"{path.stem}_overlay.png")
    print(f"wrote {2 * (len(paths) - len(skipped))} images to {out} ({describe_crf(predictor.crf)})")
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s):", file=sys.stderr)
        for line in skipped:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0
