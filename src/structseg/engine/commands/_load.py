"""Loading a trained model for the inference commands (imports torch; call inside ``run``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from structseg.engine.commands._common import tta_overrides
from structseg.engine.config import Config, load_config
from structseg.engine.predict import Predictor
from structseg.engine.pretrained import from_pretrained, is_pretrained_dir
from structseg.engine.rundir import existing_run


def load_predictor(args: argparse.Namespace) -> tuple[Predictor, Config, Path | None]:
    """The trained model ``--run-dir DIR [--which ...]`` or ``--checkpoint FILE [-c CONFIG]`` names, with the
    ``--set`` and test-time overrides applied: (predictor, its config, run root or None). The checkpoint is
    read once."""
    from structseg.errors import ConfigError

    overrides = list(getattr(args, "overrides", []) or []) + tta_overrides(args)
    device = getattr(args, "device", "auto") or "auto"
    if getattr(args, "run", None) and is_pretrained_dir(args.run):
        predictor = from_pretrained(args.run, device=device, overrides=overrides)
        assert predictor.config is not None
        return predictor, predictor.config, Path(args.run)
    if getattr(args, "run", None):
        run = existing_run(args.run)
        cfg = load_config(run.config, overrides)
        predictor = Predictor.from_checkpoint(run.checkpoint(getattr(args, "which", "best")), cfg, device=device)
        return predictor, cfg, run.root
    if getattr(args, "checkpoint", None):
        if getattr(args, "config", None):
            predictor = Predictor.from_checkpoint(args.checkpoint, load_config(args.config, overrides), device=device)
        else:
            predictor = Predictor.from_checkpoint(args.checkpoint, overrides=overrides, device=device)
        assert predictor.config is not None
        return predictor, predictor.config, None
    raise ConfigError("name a trained model with --run-dir RUN_DIR or --checkpoint FILE")
