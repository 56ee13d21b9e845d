"""``structseg train``: train from a YAML config (the embedded default when none is given)."""
from __future__ import annotations

import argparse

from structseg.engine.commands._common import add_set


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help="YAML config (default: the embedded synthetic-data config)")
    add_set(parser)
    parser.add_argument("--run-dir", help="output directory (default: runs/<config>-<time>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from checkpoints/latest.pt")
    parser.add_argument("--overwrite", action="store_true", help="start over in a run directory that has checkpoints")


def run(args: argparse.Namespace) -> int:
    from structseg.engine.config import load_config
    from structseg.engine.rundir import RunDir, default_run_dir, existing_run
    from structseg.engine.trainer import train
    from structseg.errors import CheckpointError, ConfigError

    if args.resume:
        if args.run_dir:
            raise ConfigError("--resume RUN_DIR already names the run directory; drop --run-dir")
        run_dir = existing_run(args.resume)
        if not run_dir.latest.is_file():
            raise CheckpointError(f"nothing to resume: {run_dir.latest} does not exist")
        cfg = load_config(args.config or run_dir.config, args.overrides)
        cfg.train.resume = True
        root = run_dir.root
    else:
        cfg = load_config(args.config, args.overrides)
        root = args.run_dir or cfg.run_dir or default_run_dir(args.config)
        existing = RunDir(root)
        if not cfg.train.resume and existing.latest.is_file() and not args.overwrite:
            raise ConfigError(
                f"{existing.root} already holds a trained run: continue it with --resume {existing.root}, "
                "or start over with --overwrite"
            )
    train(cfg, root)
    return 0
