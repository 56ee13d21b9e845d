"""Folding eval-mode BatchNorm into the convolution before it, for inference.

In eval mode a BatchNorm is a fixed per-channel affine map, so ``bn(conv(x))`` equals one
convolution with rescaled weights and a bias: the folded network computes the same function with
one pass over each feature map fewer. Pairs are found from the data flow of one probe forward
pass (not from the order modules were registered in): a BatchNorm folds into a convolution only
when its input is that convolution's output and no other module reads that output. The folded copy
is checked against the original on the probe; it is for inference only (its BatchNorms are gone).
"""
from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batchnorm"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _first_tensor(args: tuple[Any, ...]) -> torch.Tensor | None:
    return args[0] if args and isinstance(args[0], torch.Tensor) else None


def _logits(out: object) -> torch.Tensor:
    return out["out"] if isinstance(out, dict) else out  # type: ignore[return-value]


def _pairs(model: nn.Module, probe: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, bn name) pairs, each called once, where the BN is the only module reading the conv output."""
    names = {id(m): n for n, m in model.named_modules()}
    made_by: dict[int, str] = {}
    outputs: list[torch.Tensor] = []  # keeps the tensors alive so their ids stay unique
    readers: Counter[int] = Counter()
    calls: Counter[str] = Counter()
    candidates: list[tuple[str, str, int]] = []

    def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        calls[names[id(module)]] += 1
        x = _first_tensor(args)
        if x is None or id(x) not in made_by:
            return
        readers[id(x)] += 1
        if isinstance(module, _BN):
            candidates.append((made_by[id(x)], names[id(module)], id(x)))

    def conv_hook(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        made_by[id(out)] = names[id(module)]
        outputs.append(out)

    hooks = [m.register_forward_pre_hook(pre_hook) for m in model.modules() if not list(m.children())]
    hooks += [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, _CONV)]
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for h in hooks:
            h.remove()
    return sorted((conv, bn) for conv, bn, out in candidates
                  if readers[out] == 1 and calls[conv] == 1 and calls[bn] == 1)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    if not ref.is_floating_point():
        return 0.0 if torch.equal(out, ref) else float("inf")
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()


def fold_batchnorm(model: nn.Module, probe: torch.Tensor, *, rtol: float = 1e-3) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``model`` with its conv -> BN pairs folded; returns it and how many were folded.

    ``probe`` is a small input batch used to trace which BN reads which convolution and to check the
    result. Should the folded copy's output differ from the original's by more than ``rtol`` of the
    largest output (a reader of a conv output the hooks cannot see, such as a functional op), the pairs
    are folded one at a time and any pair that changes the output stays unfolded. ``model`` itself is
    not changed.
    """
    folded = copy.deepcopy(model).eval()
    pairs = [(c, b) for c, b in _pairs(folded, probe) if folded.get_submodule(b).running_var is not None]
    if not pairs:
        return folded, 0
    with torch.no_grad():
        ref = _logits(folded(probe))

        def fold(pair: tuple[str, str]) -> tuple[nn.Module, nn.Module]:
            conv, bn = folded.get_submodule(pair[0]), folded.get_submodule(pair[1])
            assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.modules.batchnorm._BatchNorm)
            _set(folded, pair[0], fuse_conv_bn_eval(conv, bn))
            _set(folded, pair[1], nn.Identity())
            return conv, bn

        originals = [fold(pair) for pair in pairs]
        if _rel_err(_logits(folded(probe)), ref) <= rtol:
            return folded, len(pairs)
        for pair, (conv, bn) in zip(pairs, originals):
            _set(folded, pair[0], conv)
            _set(folded, pair[1], bn)
        count = 0
        for pair in pairs:
            conv, bn = fold(pair)
            if _rel_err(_logits(folded(probe)), ref) <= rtol:
                count += 1
            else:
                _set(folded, pair[0], conv)
                _set(folded, pair[1], bn)
    return folded, count
