"""What every structseg loss shares: input checks, ignore mask, class weights, parameter validation.

Parameter checks raise :class:`~structseg.errors.ConfigError` naming the loss,
the parameter and the bad value; inputs that do not fit (shapes, labels out
of range) raise :class:`~structseg.errors.DataError`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import torch
from torch import nn

from structseg.errors import ConfigError, DataError

# Denominators are clamped to this so that a batch whose pixels are all ignored gives 0, not NaN.
TINY = 1e-12


def check_number(owner: str, name: str, value: object, *, low: float | None = None,
                 high: float | None = None, low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float, or ConfigError when it is not a real number inside the bounds."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ConfigError(f"{owner}: {name} must be a finite number, got {value!r} ({type(value).__name__})")
    v = float(value)
    if low is not None and (v < low or (low_open and v == low)):
        raise ConfigError(f"{owner}: {name} must be {'>' if low_open else '>='} {low}, got {v}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ConfigError(f"{owner}: {name} must be {'<' if high_open else '<='} {high}, got {v}")
    return v


def check_int(owner: str, name: str, value: object, *, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{owner}: {name} must be an int, got {value!r} ({type(value).__name__})")
    if low is not None and value < low:
        raise ConfigError(f"{owner}: {name} must be >= {low}, got {value}")
    return value


def check_bool(owner: str, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{owner}: {name} must be true or false, got {value!r} ({type(value).__name__})")
    return value


def check_choice(owner: str, name: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(f"{owner}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return str(value)


def check_class_vector(owner: str, name: str, value: object, num_classes: int) -> torch.Tensor | None:
    """A per-class vector (list, tuple or 1-D tensor of K finite numbers >= 0) as float32, or None."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.dim() != 1:
            raise ConfigError(f"{owner}: {name} must be 1-D with {num_classes} entries, got shape {tuple(value.shape)}")
        items: list[object] = value.tolist()
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ConfigError(f"{owner}: {name} must be a list of {num_classes} numbers or null, got {value!r}")
    if len(items) != num_classes:
        raise ConfigError(f"{owner}: {name} has {len(items)} entries but num_classes is {num_classes}")
    numbers = [check_number(owner, f"{name}[{i}]", v, low=0.0) for i, v in enumerate(items)]
    if not any(numbers):
        raise ConfigError(f"{owner}: {name} are all zero")
    return torch.tensor(numbers, dtype=torch.float32)


class SegLoss(nn.Module):
    """Base of the per-pixel losses: ``forward(logits (N,K,H,W), target (N,H,W) long) -> scalar``.

    ``class_weights`` (K,) is a buffer, so it follows ``.to(device)``.
    """

    name = "loss"
    class_weights: torch.Tensor | None

    def __init__(self, num_classes: int, *, ignore_index: int = 255,
                 class_weights: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__()
        self.num_classes = check_int(self.name, "num_classes", num_classes, low=1)
        self.ignore_index = check_int(self.name, "ignore_index", ignore_index)
        if 0 <= self.ignore_index < self.num_classes:
            raise ConfigError(
                f"{self.name}: ignore_index {self.ignore_index} is a valid class id for "
                f"num_classes={self.num_classes}; use a value outside [0, num_classes)"
            )
        weights = check_class_vector(self.name, "class_weights", class_weights, num_classes)
        self.register_buffer("class_weights", weights)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, ignore_index={self.ignore_index}"

    def prepare(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Check shapes and labels; return float32+ logits, target with ignored pixels set to 0, valid mask."""
        check_logits(self.name, logits, self.num_classes)
        if target.is_floating_point() or target.dtype == torch.bool:
            raise DataError(f"{self.name}: target must hold integer class ids, got dtype {target.dtype}")
        if target.shape != logits.shape[:1] + logits.shape[2:]:
            raise DataError(
                f"{self.name}: target shape {tuple(target.shape)} does not fit logits shape {tuple(logits.shape)}"
            )
        target = target.long()
        valid = target != self.ignore_index
        bad = valid & ((target < 0) | (target >= self.num_classes))
        if bool(bad.any()):
            values = torch.unique(target[bad])[:5].tolist()
            raise DataError(
                f"{self.name}: target labels {values} are outside [0, {self.num_classes}) "
                f"and are not the ignore index {self.ignore_index}"
            )
        return upcast(logits), target.masked_fill(~valid, 0), valid

    def pixel_weights(self, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Weight of each pixel: its class weight (1 without weights), 0 where ignored."""
        if self.class_weights is None:
            return valid.float()
        return self.class_weights[target] * valid


def check_logits(owner: str, logits: torch.Tensor, num_classes: int) -> None:
    if not logits.is_floating_point():
        raise DataError(f"{owner}: logits must be floating point, got dtype {logits.dtype}")
    if logits.dim() < 2 or logits.shape[1] != num_classes:
        raise DataError(
            f"{owner}: logits must be (N, {num_classes}, ...) for num_classes={num_classes}, "
            f"got shape {tuple(logits.shape)}"
        )


def upcast(logits: torch.Tensor) -> torch.Tensor:
    """Half / bfloat16 logits (autocast) are promoted to float32 before any log or softmax."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def one_hot(target: torch.Tensor, valid: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """(N,H,W) labels -> (N,K,H,W) indicator, all-zero on ignored pixels."""
    y = torch.zeros(target.shape[:1] + (num_classes,) + target.shape[1:], dtype=dtype, device=target.device)
    y.scatter_(1, target.unsqueeze(1), 1.0)
    return y * valid.unsqueeze(1).to(dtype)


CLASS_MODES = ("present", "all")


class ClassSetLoss(SegLoss):
    """A loss averaged over a set of classes (``classes``: "present" or "all"), per image or over the batch
    (``per_image``): the options the region losses and the Lovász loss share."""

    def __init__(self, num_classes: int, *, classes: str = "present", per_image: bool = False,
                 ignore_index: int = 255, class_weights: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__(num_classes, ignore_index=ignore_index, class_weights=class_weights)
        self.classes = check_choice(self.name, "classes", classes, CLASS_MODES)
        self.per_image = check_bool(self.name, "per_image", per_image)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, classes={self.classes!r}, per_image={self.per_image}"
