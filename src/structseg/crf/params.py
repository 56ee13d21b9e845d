"""The dense CRF's parameters, their defaults and their checks: the one place they are set (torch-free, so the
engine's ``crf:`` config section derives from it without importing torch).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from numbers import Real
from typing import TYPE_CHECKING, Any

from structseg.errors import ConfigError

if TYPE_CHECKING:
    from structseg.crf.meanfield import Compatibility

__all__ = ["DenseCRFConfig", "check_dense_params"]


def _default_key(name: str) -> str:
    return f"dense CRF: {name}"


def check_dense_params(values: Mapping[str, Any], key: Callable[[str], str] = _default_key) -> None:
    """Check the parameters in ``values`` (any subset of :class:`DenseCRFConfig`'s fields); a
    :class:`ConfigError` names the parameter as ``key(name)`` says."""
    for name, low in (("iterations", 0), ("threads", 1)):
        value = values.get(name)
        if name not in values or (name == "threads" and value is None):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{key(name)} must be an integer >= {low}, got {value!r}")
    for name in ("sxy_gaussian", "sxy_bilateral", "srgb"):
        value = values.get(name, 1.0)
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{key(name)} (a kernel width) must be a positive number, got {value!r}")
    for name in ("compat_gaussian", "compat_bilateral"):
        value = values.get(name, 1.0)
        if hasattr(value, "dim"):  # a (K, K) tensor
            if value.dim() != 2 or value.shape[0] != value.shape[1]:
                raise ConfigError(f"{key(name)} matrix must be square (K, K), got shape {tuple(value.shape)}")
            if not bool(value.isfinite().all()):
                raise ConfigError(f"{key(name)} matrix has NaN or infinite entries")
        elif isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{key(name)} (a Potts weight) must be a positive number, got {value!r}")


@dataclass(frozen=True)
class DenseCRFConfig:
    """Parameters of the dense CRF, named as in pydensecrf.

    ``compat_*`` is a Potts weight (> 0) or a (K, K) compatibility (penalty) matrix.
    ``threads``: intra-op CPU threads while the CRF runs (None: torch's setting). One
    thread is the safe choice on a CPU shared with other jobs, where torch's thread
    hand-offs can cost more than the work.
    """

    iterations: int = 5
    sxy_gaussian: float = 3.0
    compat_gaussian: Compatibility = 3.0
    sxy_bilateral: float = 80.0
    srgb: float = 13.0
    compat_bilateral: Compatibility = 10.0
    threads: int | None = None

    def __post_init__(self) -> None:
        check_dense_params({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> DenseCRFConfig:
        """Build from a mapping (e.g. a YAML section); unknown keys are a ConfigError."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"dense CRF: unknown parameter(s) {unknown}; known: {sorted(known)}")
        for name in ("compat_gaussian", "compat_bilateral"):
            if isinstance(values.get(name), (list, tuple)):
                import torch

                values[name] = torch.tensor(values[name], dtype=torch.float32)
        return cls(**values)

    def compatibilities(self) -> list[Compatibility]:
        return [self.compat_gaussian, self.compat_bilateral]
