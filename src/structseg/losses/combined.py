"""Weighted sum of several losses, keeping each part for logging."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from structseg.errors import ConfigError


class WeightedSumLoss(nn.Module):
    """``sum_i weight_i * loss_i(logits, target)``.

    After each call ``last_parts`` maps every part's name to its unweighted value
    (a detached scalar tensor; ``float()`` it for logging, which syncs the device). Parts are summed in
    at least float32 even when the logits come from reduced-precision autocast.
    """

    def __init__(self, parts: Sequence[tuple[str, float, nn.Module]]) -> None:
        super().__init__()
        if not parts:
            raise ConfigError("WeightedSumLoss needs at least one part")
        names = [name for name, _, _ in parts]
        if len(set(names)) != len(names):
            raise ConfigError(f"WeightedSumLoss: part names must be unique, got {names}")
        self.names = names
        self.weights = [float(weight) for _, weight, _ in parts]
        self.losses = nn.ModuleList(module for _, _, module in parts)
        self.last_parts: dict[str, torch.Tensor] = {}

    def extra_repr(self) -> str:
        return " + ".join(f"{w:g} * {n}" for n, w in zip(self.names, self.weights))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        parts = {}
        for name, weight, loss in zip(self.names, self.weights, self.losses):
            value = loss(logits, target)
            if value.dtype in (torch.float16, torch.bfloat16):
                value = value.float()
            parts[name] = value.detach()
            total = weight * value if total is None else total + weight * value
        self.last_parts = parts
        assert total is not None  # at least one part, checked at construction
        return total
