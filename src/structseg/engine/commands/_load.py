"""Loading a trained model for the inference commands (imports torch; call inside ``run``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from structseg.engine.commands._common import tta_overrides
from structseg.engine.config import Config, apply_overrides, load_config
from structseg.engine.predict import Predictor
from structseg.engine.rundir import existing_run


def run_config(args: argparse.Namespace) -> tuple[Config, Path, Path | None]:
    """(config, checkpoint, run root) from ``--run DIR`` or ``--checkpoint FILE [-c CONFIG]``, overrides applied."""
    from structseg.engine.checkpoint import load_checkpoint
    from structseg.engine.trainer import config_of_checkpoint
    from structseg.errors import ConfigError

    overrides = list(getattr(args, "overrides", []) or []) + tta_overrides(args)
    if getattr(args, "run", None):
        run = existing_run(args.run)
        ckpt = run.checkpoint(getattr(args, "which", "best"))
        return load_config(run.config, overrides), ckpt, run.root
    if getattr(args, "checkpoint", None):
        ckpt = Path(args.checkpoint)
        if getattr(args, "config", None):
            return load_config(args.config, overrides), ckpt, None
        return apply_overrides(config_of_checkpoint(load_checkpoint(ckpt)), overrides), ckpt, None
    raise ConfigError("name a trained model with --run RUN_DIR or --checkpoint FILE")


def load_predictor(args: argparse.Namespace) -> tuple[Predictor, Config, Path | None]:
    cfg, ckpt, root = run_config(args)
    predictor = Predictor.from_checkpoint(ckpt, cfg, device=getattr(args, "device", "auto") or "auto")
    return predictor, cfg, root
