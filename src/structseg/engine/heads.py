"""SVM heads in the engine: ``model.head: svm | ssvm`` (the heads live in :mod:`structseg.structured.models`).

:func:`build_structured` wraps a segmentation model in an :class:`EngineSegmenter`:
the base model's penultimate features (average-pooled by
``model.structured.feature_stride``) feed a :class:`~structseg.structured.models.LinearSVMHead`
("svm") or a :class:`~structseg.structured.models.StructuredSVMHead` ("ssvm").
The trainer then optimises the head's own hinge loss (``model(x, target)``), and
evaluation / prediction use MAP inference (``model.predict(x, size)``) instead of
an argmax over averaged probabilities. The head always runs in float32 outside
autocast; the base model still gets the fast path.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structseg.engine.config import EvalConfig, ModelConfig
from structseg.errors import ConfigError
from structseg.structured.models import LinearSVMHead, StructuredSegmenter, StructuredSVMHead

STRUCTURED_HEADS = ("svm", "ssvm")

__all__ = ["STRUCTURED_HEADS", "EngineSegmenter", "as_engine_segmenter", "build_structured", "check_map_eval",
           "describe_head"]


def _float32(device: torch.device):
    """Autocast off: the hinge, its loss-augmented inference and MAP decoding run in float32."""
    return torch.autocast(device_type=device.type, enabled=False)


class EngineSegmenter(StructuredSegmenter):
    """:class:`StructuredSegmenter` as the engine runs it (same state-dict keys: ``base.*``, ``head.*``).

    - ``model(x)`` -> unary scores (N, K, H, W); ``model(x, target)`` -> the head's loss, so
      DistributedDataParallel sees the forward pass that builds the graph;
    - features (they never include a base model's ``size_divisor`` padding) are average-pooled by
      ``feature_stride`` (ceil mode) before the head;
    - ``predict(x, size=None)`` -> MAP labels (N, *size) (default: the input size) by ``eval_solver``.
    """

    map_inference = True

    def __init__(self, base_model: nn.Module, head: nn.Module, *, feature_stride: int = 1,
                 eval_solver: str | None = None) -> None:
        super().__init__(base_model, head)
        self.feature_stride = int(feature_stride)
        self.eval_solver = eval_solver

    def features(self, x: Tensor) -> Tensor:
        feats = self.base.forward_features(x)["features"]
        if self.feature_stride > 1:
            feats = F.avg_pool2d(feats, self.feature_stride, self.feature_stride, ceil_mode=True)
        return feats

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        feats = self.features(x)
        with _float32(x.device):
            scores = self.head(feats.float())
            out = F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"out": out, "features": feats}

    def forward(self, x: Tensor, target: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if target is None:
            return self.forward_features(x)["out"]
        return self.loss(x, target)

    def loss(self, x: Tensor, target: Tensor) -> Tensor:
        feats = self.features(x)
        with _float32(x.device):
            return self.head.loss(feats.float(), target)

    @torch.no_grad()
    def predict(self, x: Tensor, size: tuple[int, int] | None = None, **solver_options: Any) -> Tensor:
        feats = self.features(x)
        out_size = tuple(size) if size is not None else tuple(x.shape[-2:])
        if isinstance(self.head, StructuredSVMHead) and self.eval_solver is not None:
            solver_options.setdefault("solver", self.eval_solver)
        with _float32(x.device):
            return self.head.predict(feats.float(), size=out_size, **solver_options)


def as_engine_segmenter(model: nn.Module) -> nn.Module:
    """A plain :class:`StructuredSegmenter` re-wrapped as an :class:`EngineSegmenter` (same parameters)."""
    if isinstance(model, StructuredSegmenter) and not isinstance(model, EngineSegmenter):
        return EngineSegmenter(model.base, model.head)
    return model


def check_map_eval(cfg: EvalConfig, head: str = "svm/ssvm") -> None:
    """MAP labels cannot be averaged: whole-image, one scale, no flip; a :class:`ConfigError` otherwise."""
    why = f"model.head={head} predicts MAP labels, which test-time augmentation cannot average"
    if cfg.mode != "whole":
        raise ConfigError(f"eval.mode={cfg.mode!r}: {why}; use eval.mode=whole")
    if cfg.flip:
        raise ConfigError(f"eval.flip=true: {why}; use eval.flip=false")
    if len(cfg.scales) != 1 or cfg.scales[0] <= 0:
        raise ConfigError(f"eval.scales={cfg.scales}: {why}; give one positive scale, e.g. [1.0]")


def _check_solver_options(solver: str, options: dict[str, Any], key: str) -> None:
    from structseg.structured.inference.base import get_solver

    fn = get_solver(solver).fn
    try:
        inspect.signature(fn).bind(None, **options)
    except TypeError:
        valid = [p for p in inspect.signature(fn).parameters if p != "problem"]
        bad = [k for k in options if k not in valid]
        raise ConfigError(f"config key '{key}': {', '.join(map(repr, bad)) or 'these options'} not accepted by "
                          f"solver {solver!r}; valid options: {', '.join(valid)}") from None


def build_structured(base: nn.Module, cfg: ModelConfig, num_classes: int, ignore_index: int = 255) -> EngineSegmenter:
    """``base`` with the SVM head ``cfg.head`` on its penultimate features (options ``cfg.structured``)."""
    if cfg.head not in STRUCTURED_HEADS:
        raise ConfigError(f"model.head={cfg.head!r} is not an SVM head ({', '.join(STRUCTURED_HEADS)})")
    if cfg.aux:
        raise ConfigError(f"model.aux=true: the auxiliary classifier is not trained with model.head={cfg.head}; "
                          "set model.aux=false")
    channels = getattr(base, "feature_channels", None)
    if not isinstance(channels, int) or not hasattr(base, "forward_features"):
        raise ConfigError(f"model.head={cfg.head} needs a model with forward_features() and feature_channels; "
                          f"model.name={cfg.name!r} has none")
    s = cfg.structured
    head: nn.Module
    if cfg.head == "svm":
        head = LinearSVMHead(channels, num_classes, ignore_index=ignore_index, margin=s.margin)
        return EngineSegmenter(base, head, feature_stride=s.feature_stride)
    for solver in (s.solver, s.eval_solver):
        if solver is not None:
            _check_solver_options(solver, s.solver_options, "model.structured.solver_options")
    connectivity = tuple(s.connectivity) if isinstance(s.connectivity, list) else s.connectivity
    head = StructuredSVMHead(channels, num_classes, pairwise=s.pairwise, connectivity=connectivity,
                             ignore_index=ignore_index, solver=s.solver, solver_options=s.solver_options,
                             loss_normalize=s.loss_normalize, downsample=s.downsample)
    return EngineSegmenter(base, head, feature_stride=s.feature_stride, eval_solver=s.eval_solver)


def describe_head(cfg: ModelConfig) -> str:
    """One line naming the head and its options, for logs."""
    s = cfg.structured
    if cfg.head == "svm":
        return f"model.head=svm (margin {s.margin:g}, feature stride {s.feature_stride})"
    if cfg.head == "ssvm":
        return (f"model.head=ssvm ({s.pairwise} pairwise, connectivity {s.connectivity}, solver {s.solver}"
                f"{'' if s.eval_solver is None else f' / eval {s.eval_solver}'}, feature stride {s.feature_stride})")
    return "model.head=softmax"
