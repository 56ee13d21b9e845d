"""``structseg report``: one self-contained HTML page about a run."""
from __future__ import annotations

import argparse

from structseg.engine.commands._common import add_run_dir


def configure(parser: argparse.ArgumentParser) -> None:
    add_run_dir(parser)
    parser.add_argument("-o", "--out", help="HTML file (default: RUN_DIR/report.html)")
    parser.add_argument("--samples", type=int, default=4, help="validation images with predictions (0: none)")
    parser.add_argument("--which", default="best", help="checkpoint for the samples: best | latest")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")


def run(args: argparse.Namespace) -> int:
    from structseg.engine.report import build_report

    out = build_report(args.run, args.out, samples=args.samples, which=args.which, device=args.device)
    print(f"wrote {out}")
    return 0
