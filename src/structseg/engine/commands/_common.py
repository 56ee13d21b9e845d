"""Argument helpers shared by the engine's commands (no heavy imports here)."""
from __future__ import annotations

import argparse
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                        help="override config fields, e.g. --set train.iterations=100 optim.lr=0.01 (values are YAML)")


RUN_HELP = "a run directory written by structseg train"


def add_run_dir(parser: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup, *, required: bool = True) -> None:
    """``--run-dir RUN_DIR`` (``--run`` is the same flag), as every command spells it."""
    parser.add_argument("--run-dir", "--run", dest="run", metavar="RUN_DIR", required=required, help=RUN_HELP)


def add_model_source(parser: argparse.ArgumentParser) -> None:
    """Which trained model: ``--run-dir DIR [--which best|latest|FILE]`` or ``--checkpoint FILE [-c CONFIG]``,
    plus ``--device``."""
    src = parser.add_mutually_exclusive_group(required=True)
    add_run_dir(src, required=False)
    src.add_argument("--checkpoint", metavar="FILE", help="a checkpoint file (its stored config unless -c)")
    parser.add_argument("-c", "--config", help="config for --checkpoint (default: the one stored in it)")
    parser.add_argument("--which", default="best", help="best | latest | a checkpoint path (with --run-dir)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")


def add_crf(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--crf", choices=["none", "dense"],
                        help="dense-CRF refinement of the probabilities (default: the config's crf.mode, none); "
                             "its parameters: --set crf.iterations=10 crf.srgb=5 ...")


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
