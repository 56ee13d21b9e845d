"""``structseg train``: train from a YAML config (the embedded default when none is given).

A config with ``task: instance`` trains Mask R-CNN (:mod:`structseg.instance`); one
without a ``task`` key trains a semantic-segmentation network.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from structseg.engine.commands._common import add_set


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help="YAML config (default: the embedded synthetic-data config); "
                                               "'task: instance' in it trains Mask R-CNN")
    add_set(parser)
    parser.add_argument("--run-dir", help="output directory (default: runs/<config>-<time>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from checkpoints/latest.pt "
                                                            "(model, optimizer, schedule; model.init_from is ignored). "
                                                            "To fine-tune from another run instead, start a new run "
                                                            "with --set model.init_from=RUN_DIR")
    parser.add_argument("--overwrite", action="store_true", help="start over in a run directory that has checkpoints")


def config_task(path: str | Path | None) -> str:
    """The ``task`` a YAML config declares: ``"instance"``, or ``"semantic"`` when it has no ``task`` key."""
    from structseg.engine.config import read_yaml
    from structseg.errors import ConfigError

    if path is None:
        return "semantic"
    data = read_yaml(path)
    if "task" not in data:
        return "semantic"
    if data["task"] != "instance":
        raise ConfigError(f"config file {path}: unknown task {data['task']!r}; the only task key is "
                          "'task: instance' (Mask R-CNN); leave it out for semantic segmentation")
    return "instance"


def _train_instance(args: argparse.Namespace) -> int:
    """Mask R-CNN through the ``structseg instance train`` entry point, with ``structseg train``'s run-dir rules."""
    from structseg.engine.rundir import default_run_dir
    from structseg.errors import ConfigError
    from structseg.instance.commands import train_from_args
    from structseg.instance.config import load_instance_config

    if args.resume:
        raise ConfigError(f"--resume is not supported for task: instance ({args.config}); start a new run")
    cfg = load_instance_config(args.config, args.overrides)
    root = Path(args.run_dir or cfg.run_dir or default_run_dir(args.config))
    if (root / "checkpoints" / "latest.pt").is_file() and not args.overwrite:
        raise ConfigError(f"{root} already holds a trained instance run: pick another --run-dir, "
                          "or start over with --overwrite")
    return train_from_args(Path(args.config), args.overrides, root)


def run(args: argparse.Namespace) -> int:
    from structseg.engine.config import load_config
    from structseg.engine.rundir import RunDir, default_run_dir, existing_run
    from structseg.engine.trainer import train
    from structseg.errors import CheckpointError, ConfigError

    if config_task(args.config) == "instance":
        return _train_instance(args)
    if args.resume:
        if args.run_dir:
            raise ConfigError("--resume RUN_DIR already names the run directory; drop --run-dir")
        run_dir = existing_run(args.resume)
        if args.config is None and config_task(run_dir.config) == "instance":
            raise ConfigError(f"--resume is not supported for task: instance ({run_dir.config}); start a new run")
        config = args.config or run_dir.config
        if not run_dir.latest.is_file():
            raise CheckpointError(f"nothing to resume: {run_dir.latest} does not exist")
        cfg = load_config(config, args.overrides)
        cfg.train.resume = True
        root = run_dir.root
    else:
        from structseg.engine.init_from import check_init_from

        cfg = load_config(args.config, args.overrides)
        check_init_from(cfg)  # model.init_from names something to read (--resume ignores it)
        root = Path(args.run_dir or cfg.run_dir or default_run_dir(args.config))
        existing = RunDir(root)
        if not cfg.train.resume and existing.latest.is_file() and not args.overwrite:
            raise ConfigError(
                f"{existing.root} already holds a trained run: continue it with --resume {existing.root}, "
                "or start over with --overwrite"
            )
    train(cfg, root)
    return 0
