"""Training, evaluation and prediction.

Light to import: the names below load their modules (and torch) on first use.

- :func:`load_config` / :func:`save_config` / :class:`Config` (:mod:`.config`)
- :class:`Trainer` / :func:`train` (:mod:`.trainer`)
- :func:`evaluate_model` / :func:`infer` (:mod:`.evaluate`)
- :class:`Predictor` (:mod:`.predict`)
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Config": "structseg.engine.config",
    "load_config": "structseg.engine.config",
    "save_config": "structseg.engine.config",
    "apply_overrides": "structseg.engine.config",
    "Trainer": "structseg.engine.trainer",
    "TrainResult": "structseg.engine.trainer",
    "NonFiniteLossError": "structseg.engine.trainer",
    "train": "structseg.engine.trainer",
    "evaluate_model": "structseg.engine.evaluate",
    "infer": "structseg.engine.evaluate",
    "Predictor": "structseg.engine.predict",
    "RunDir": "structseg.engine.rundir",
    "build_scheduler": "structseg.engine.schedules",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'structseg.engine' has no attribute {name!r}")
