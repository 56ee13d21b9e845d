"""``build_loss``: a loss module from a name, a dict of parameters or a list of them."""
from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from structseg.errors import ConfigError
from structseg.losses.base import SegLoss, check_class_vector, check_int, check_number
from structseg.losses.combined import WeightedSumLoss
from structseg.losses.cross_entropy import CrossEntropyLoss, OhemCrossEntropyLoss
from structseg.losses.focal import FocalLoss
from structseg.losses.kl import KLDivergenceLoss
from structseg.losses.lovasz import LovaszSoftmaxLoss
from structseg.losses.mse import MSELoss
from structseg.losses.region import DiceLoss, SoftIoULoss

LOSSES: dict[str, type[SegLoss]] = {
    cls.name: cls
    for cls in (CrossEntropyLoss, FocalLoss, DiceLoss, SoftIoULoss, LovaszSoftmaxLoss, OhemCrossEntropyLoss,
                KLDivergenceLoss, MSELoss)
}
SPEC_KEYS = ("name", "weight", "class_weights")
_COMMON = {"num_classes", "ignore_index", "class_weights"}


def list_losses() -> list[str]:
    """Names ``build_loss`` accepts."""
    return sorted(LOSSES)


def loss_params(name: str) -> dict[str, Any]:
    """The tunable parameters of loss ``name`` and their defaults."""
    signature = inspect.signature(_loss_class(name).__init__)
    return {
        p.name: p.default
        for p in signature.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _COMMON
    }


def _loss_class(name: object) -> type[SegLoss]:
    if not isinstance(name, str) or name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; valid losses: {', '.join(list_losses())}")
    return LOSSES[name]


def _build_one(spec: str | Mapping[str, Any], num_classes: int, ignore_index: int,
               class_weights: torch.Tensor | None) -> tuple[str, float, SegLoss]:
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"a loss spec must be a name or a mapping with 'name', got {spec!r}")
    params = dict(spec)
    if "name" not in params:
        raise ConfigError(f"loss spec {dict(spec)!r} has no 'name'; valid losses: {', '.join(list_losses())}")
    name = params.pop("name")
    cls = _loss_class(name)
    weight = check_number(f"loss {name!r}", "weight", params.pop("weight", 1.0), low=0.0)
    if "class_weights" in params:
        class_weights = check_class_vector(f"loss {name!r}", "class_weights", params.pop("class_weights"), num_classes)
    valid = loss_params(name)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(
            f"loss {name!r}: unknown parameter(s) {', '.join(map(repr, unknown))}; valid parameters: "
            f"{', '.join(sorted(valid)) or '(none)'} (and {', '.join(SPEC_KEYS)})"
        )
    module = cls(num_classes, ignore_index=ignore_index, class_weights=class_weights, **params)
    return name, weight, module


def build_loss(spec: str | Mapping[str, Any] | Sequence[Mapping[str, Any] | str], *, num_classes: int,
               ignore_index: int = 255, class_weights: Sequence[float] | torch.Tensor | None = None) -> nn.Module:
    """Loss module ``(logits (N,K,H,W), target (N,H,W) long) -> scalar`` from a spec.

    ``spec`` is a loss name (``list_losses()``), a dict ``{name, weight, class_weights, **params}``
    or a list of those, which gives a :class:`WeightedSumLoss` (its ``last_parts`` names each part
    after its loss, with ``_2``, ``_3`` ... for repeats). ``class_weights`` apply to every part
    that does not set its own (``class_weights: null`` in a part turns them off for it).
    """
    check_int("build_loss", "num_classes", num_classes, low=1)
    check_int("build_loss", "ignore_index", ignore_index)
    weights = check_class_vector("build_loss", "class_weights", class_weights, num_classes)
    if isinstance(spec, (str, Mapping)):
        name, weight, module = _build_one(spec, num_classes, ignore_index, weights)
        return module if weight == 1.0 else WeightedSumLoss([(name, weight, module)])
    if not isinstance(spec, Sequence) or len(spec) == 0:
        raise ConfigError(f"loss spec must be a name, a mapping or a non-empty list of them, got {spec!r}")
    parts = []
    seen: dict[str, int] = {}
    for item in spec:
        name, weight, module = _build_one(item, num_classes, ignore_index, weights)
        seen[name] = seen.get(name, 0) + 1
        parts.append((name if seen[name] == 1 else f"{name}_{seen[name]}", weight, module))
    return WeightedSumLoss(parts)
