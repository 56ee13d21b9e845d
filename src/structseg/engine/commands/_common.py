"""Argument helpers shared by the engine's commands (no heavy imports here)."""
from __future__ import annotations

import argparse
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                        help="override config fields, e.g. --set train.iterations=100 optim.lr=0.01 (values are YAML)")


def add_tta(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("test-time inference (defaults: the run's eval section)")
    g.add_argument("--mode", choices=["whole", "slide"], help="whole image or sliding window")
    g.add_argument("--window", type=int, nargs="+", metavar="N", help="sliding window size: N or H W")
    g.add_argument("--stride", type=int, nargs="+", metavar="N", help="sliding window stride: N or H W")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None, help="horizontal-flip TTA")
    g.add_argument("--scales", type=float, nargs="+", metavar="S", help="multi-scale TTA, e.g. 0.75 1 1.25")


def tta_overrides(args: argparse.Namespace) -> list[str]:
    """``--mode/--flip/...`` as ``eval.*`` config overrides."""
    out = []
    if getattr(args, "mode", None):
        out.append(f"eval.mode={args.mode}")
    if getattr(args, "window", None):
        out.append(f"eval.window={list(args.window)}")
    if getattr(args, "stride", None):
        out.append(f"eval.stride={list(args.stride)}")
    if getattr(args, "flip", None) is not None:
        out.append(f"eval.flip={'true' if args.flip else 'false'}")
    if getattr(args, "scales", None):
        out.append(f"eval.scales={list(args.scales)}")
    return out


def expand_images(paths: list[str]) -> list[Path]:
    """Files as given; directories expanded to the images inside them (sorted)."""
    from structseg.errors import DataError

    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"image {p} does not exist")
    if not out:
        raise DataError(f"no images found in {', '.join(paths)}")
    return out
