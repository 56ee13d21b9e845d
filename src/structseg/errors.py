"""Exception types shared across the package.

Every error raised on bad user input names the file, field or value at fault.
"""
from __future__ import annotations


class StructsegError(Exception):
    """Base class of every error structseg raises on bad input."""


class DataError(StructsegError, ValueError):
    """A data file or data-set layout is missing, unreadable or inconsistent."""


class ConfigError(StructsegError, ValueError):
    """A configuration key is unknown or its value has the wrong type."""


class CheckpointError(StructsegError, ValueError):
    """A checkpoint is missing, corrupt or does not match the model."""


class WeightsUnavailableError(StructsegError, RuntimeError):
    """Pretrained weights were asked for but cannot be had (offline, file missing)."""


class SolverError(StructsegError, ValueError):
    """An inference solver was asked for a problem it cannot take."""
