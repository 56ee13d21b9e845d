"""SVM heads in the engine: ``model.head: svm | ssvm`` (the heads live in :mod:`structseg.structured.models`).

:func:`build_structured` wraps a segmentation model in a
:class:`~structseg.structured.models.StructuredSegmenter`:
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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from torch import nn

from structseg.crf.params import DenseCRFConfig
from structseg.engine.config import Config, EvalConfig, ModelConfig
from structseg.errors import ConfigError
from structseg.structured.models import DenseSSVMHead, LinearSVMHead, StructuredSegmenter, StructuredSVMHead

if TYPE_CHECKING:
    from structseg.models.base import SegmentationModel

STRUCTURED_HEADS = ("svm", "ssvm")

__all__ = ["STRUCTURED_HEADS", "build_structured", "check_map_eval", "check_structured_run", "describe_head"]


def check_structured_run(cfg: Config, say: Callable[[str], None]) -> None:
    """A run with an SVM head: evaluation must suit MAP labels (:func:`check_map_eval`); ``say`` which config
    sections do not apply."""
    check_map_eval(cfg.eval, cfg.model.head)
    weighted = (f", weighted per class by data.class_weights={cfg.data.class_weights}"
                if cfg.data.class_weights != "none" else "")
    say(f"{describe_head(cfg.model)} trains with its own hinge loss{weighted}; the loss section "
        f"({', '.join(t.name for t in cfg.loss) or 'empty'}) does not apply")


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


def build_structured(base: nn.Module, cfg: ModelConfig, num_classes: int, ignore_index: int = 255, *,
                     dense: DenseCRFConfig | None = None, mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None) -> StructuredSegmenter:
    """``base`` with the SVM head ``cfg.head`` on its penultimate features (options ``cfg.structured``); ``dense``
    (kernel widths, mean-field iterations) and the input's ``mean``/``std`` serve ``pairwise=dense``."""
    if cfg.head not in STRUCTURED_HEADS:
        raise ConfigError(f"model.head={cfg.head!r} is not an SVM head ({', '.join(STRUCTURED_HEADS)})")
    if cfg.aux:
        raise ConfigError(f"model.aux=true: the auxiliary classifier is not trained with model.head={cfg.head}; "
                          "set model.aux=false")
    channels = getattr(base, "feature_channels", None)
    if not isinstance(channels, int) or not hasattr(base, "forward_features"):
        raise ConfigError(f"model.head={cfg.head} needs a model with forward_features() and feature_channels; "
                          f"model.name={cfg.name!r} has none")
    model = cast("SegmentationModel", base)  # has forward_features and feature_channels, checked above
    s = cfg.structured
    head: LinearSVMHead | StructuredSVMHead | DenseSSVMHead
    if cfg.head == "svm":
        head = LinearSVMHead(channels, num_classes, ignore_index=ignore_index, margin=s.margin)
        return StructuredSegmenter(model, head, feature_stride=s.feature_stride, residual=s.residual,
                                   train_backbone=s.train_backbone)
    if s.pairwise == "dense":
        head = DenseSSVMHead(channels, num_classes, crf=dense, mean=mean, std=std, ignore_index=ignore_index,
                             loss_normalize=s.loss_normalize, margin=s.margin)
        return StructuredSegmenter(model, head, feature_stride=s.feature_stride, residual=s.residual,
                                   train_backbone=s.train_backbone, train_unary=s.train_unary)
    for solver in (s.solver, s.eval_solver):
        if solver is not None:
            _check_solver_options(solver, s.solver_options, "model.structured.solver_options")
    connectivity = (s.connectivity[0], s.connectivity[1]) if isinstance(s.connectivity, list) else s.connectivity
    head = StructuredSVMHead(channels, num_classes, pairwise=s.pairwise, connectivity=connectivity,
                             ignore_index=ignore_index, solver=s.solver, solver_options=s.solver_options,
                             loss_normalize=s.loss_normalize, downsample=s.downsample, upsample=s.upsample,
                             grid=s.grid, contrast_sigma=s.contrast_sigma,
                             contrast_constant=s.contrast_constant, attractive=s.attractive,
                             margin=s.margin)
    return StructuredSegmenter(model, head, feature_stride=s.feature_stride, eval_solver=s.eval_solver,
                               residual=s.residual, train_backbone=s.train_backbone, train_unary=s.train_unary)


def describe_head(cfg: ModelConfig) -> str:
    """One line naming the head and its options, for logs."""
    s = cfg.structured
    form = (f"{', residual' if s.residual else ''}{'' if s.train_backbone else ', network frozen'}"
            f"{'' if s.train_unary else ', unary layer fixed at 0'}")
    if cfg.head == "svm":
        return f"model.head=svm (margin {s.margin:g}, feature stride {s.feature_stride}{form})"
    if cfg.head == "ssvm" and s.pairwise == "dense":
        return (f"model.head=ssvm (dense pairwise: the crf section's kernels with learnt K x K penalties, mean-field "
                f"inference, margin {s.margin:g}{form})")
    if cfg.head == "ssvm":
        return (f"model.head=ssvm ({s.pairwise} pairwise, connectivity {s.connectivity}, solver {s.solver}"
                f"{'' if s.eval_solver is None else f' / eval {s.eval_solver}'}, feature stride {s.feature_stride}"
                f", {s.grid} grid, {s.upsample} upsampling, margin {s.margin:g}"
                f"{', no constant reward' if s.pairwise == 'contrast' and not s.contrast_constant else ''}"
                f"{', attractive' if s.attractive else ''}{form})")
    return "model.head=softmax"
