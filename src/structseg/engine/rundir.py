"""The layout of a run directory (see docs/CONTRACTS.md).

::

    RUN/config.yaml            resolved config
    RUN/log.csv                one row per logged iteration / evaluation
    RUN/tb/                    TensorBoard events
    RUN/checkpoints/latest.pt  last checkpoint (resume from here)
    RUN/checkpoints/best.pt    best validation mIoU so far
    RUN/figures/*.png          curves, confusion matrix, samples
    RUN/metrics.json           final validation metrics
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from structseg.errors import CheckpointError


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log(self) -> Path:
        return self.root / "log.csv"

    @property
    def tb(self) -> Path:
        return self.root / "tb"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.checkpoints / "latest.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    def clear_outputs(self) -> None:
        """Remove what an earlier run left here (log, TensorBoard events, metrics, checkpoints) before a fresh start."""
        import shutil

        for path in (self.log, self.metrics, self.latest, self.best):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.tb, ignore_errors=True)

    def remove_temporaries(self) -> list[Path]:
        """Delete the half-written checkpoint files (``.<name>.*.tmp``) a killed run can leave; returns them."""
        stale = sorted(self.checkpoints.glob(".*.tmp")) if self.checkpoints.is_dir() else []
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    def make(self) -> RunDir:
        for d in (self.root, self.checkpoints, self.figures):
            d.mkdir(parents=True, exist_ok=True)
        return self

    def checkpoint(self, which: str = "best") -> Path:
        """``"best"`` / ``"latest"`` (best falls back to latest) or a file path."""
        if which not in ("best", "latest"):
            path = Path(which)
            if not path.is_file():
                raise CheckpointError(f"checkpoint {path} does not exist")
            return path
        if which == "best" and self.best.is_file():
            return self.best
        if self.latest.is_file():
            return self.latest
        raise CheckpointError(f"run directory {self.root} has no checkpoint in {self.checkpoints}")


def existing_run(path: str | Path) -> RunDir:
    """A run directory that must already exist and hold a config; clear error otherwise."""
    run = RunDir(path)
    if not run.root.is_dir():
        raise CheckpointError(f"run directory {run.root} does not exist")
    if not run.config.is_file():
        raise CheckpointError(
            f"{run.root} is not a structseg run directory: {run.config.name} is missing "
            "(it is written by `structseg train`)"
        )
    return run


def default_run_dir(config_path: str | Path | None) -> Path:
    """``runs/<config name>-<timestamp>`` for a run started without ``--run-dir``."""
    stem = Path(config_path).stem if config_path else "default"
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
