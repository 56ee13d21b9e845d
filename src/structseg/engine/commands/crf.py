"""``structseg crf tune``: search the dense CRF's parameters of a run on its training images."""
from __future__ import annotations

import argparse

from structseg.engine.commands._common import add_run_dir


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="crf_command", metavar="SUBCOMMAND")
    sub.required = True
    tune = sub.add_parser("tune", help="search sxy / srgb / compatibilities / iterations on training images",
                          description="Search the dense CRF's parameters on the run's training images (never val), "
                                      "write the best into the run's config (crf: section, read by eval --crf "
                                      "dense) and every trial into crf_tune.json; print the table.")
    add_run_dir(tune)
    tune.add_argument("--images", type=int, default=20, help="training images scored per trial (default: 20)")
    tune.add_argument("--method", choices=("coordinate", "random"), default="coordinate",
                      help="coordinate: one parameter at a time from the current values; random: log-uniform draws")
    tune.add_argument("--rounds", type=int, default=2, help="coordinate search passes (default: 2)")
    tune.add_argument("--trials", type=int, default=24, help="random search draws (default: 24)")
    tune.add_argument("--seed", type=int, default=0, help="random search seed")
    tune.add_argument("--device", default="cpu", help="auto | cpu | cuda[:i]")
    tune.add_argument("--dry-run", action="store_true", help="print the table; leave the run's config as it is")
    tune.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from structseg.engine.crf_tune import tune_dense_crf, write_tuned

    result = tune_dense_crf(args.run, images=args.images, method=args.method, rounds=args.rounds,
                            trials=args.trials, seed=args.seed, device=args.device, progress=not args.no_progress)
    print(result.table())
    if not args.dry_run:
        out = write_tuned(args.run, result)
        print(f"wrote the best parameters into {args.run}/config.yaml (crf:) and every trial into {out}; "
              "structseg eval --crf dense uses them")
    return 0
