"""Config -> the objects of a run: data sets, model, loss, optimizer, fast path."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from torch.utils.data import Dataset

from structseg.data.base import ClassInfo, SegmentationDataset
from structseg.engine.config import Config, as_pair
from structseg.errors import ConfigError, DataError
from structseg.losses.combined import WeightedSumLoss

if TYPE_CHECKING:
    from structseg.data.transforms import PairPipeline
    from structseg.engine.datasets import Pair
    from structseg.models.base import SegmentationModel
    from structseg.models.fastpath import FastPath

# ------------------------------------------------------------------- data

def raw_dataset(cfg: Config, split: str) -> SegmentationDataset:
    """A split of the configured data set, untransformed; an empty split is a :class:`DataError`."""
    from structseg.data import build_dataset

    d = cfg.data
    ds = build_dataset(d.layout, d.root, split, **d.options)
    if len(ds) == 0:
        where = f" under {d.root}" if d.root else ""
        raise DataError(f"data split '{split}' of layout '{d.layout}'{where} is empty")
    return ds


Normalization = tuple[tuple[float, ...], tuple[float, ...]]


def normalization(cfg: Config | None) -> Normalization:
    """The input (mean, std) of a run: ``data.mean``/``data.std`` when set (a trained run records them),
    else those of the model's weights (:func:`structseg.models.weights.input_normalization`)."""
    from structseg.models.weights import input_normalization

    if cfg is None:
        return input_normalization(None, None)
    d, m = cfg.data, cfg.model
    if d.mean is not None and d.std is not None:  # checked when the config was read
        return tuple(float(v) for v in d.mean), tuple(float(v) for v in d.std)
    backbone = m.backbone
    if backbone is None and m.weights == "imagenet":
        from structseg.models import model_spec

        backbone = model_spec(m.name).default_backbone
    return input_normalization(backbone, m.weights)


def eval_transform(cfg: Config | None = None) -> PairPipeline:
    """Whole image, normalized as the run's model expects (:func:`normalization`)."""
    from structseg.data.transforms import eval_transforms

    mean, std = normalization(cfg)
    return eval_transforms(mean=mean, std=std)


def build_train_dataset(cfg: Config, progress: bool = False,
                        base: SegmentationDataset | None = None) -> SegmentationDataset:
    """The training split (or ``base``, e.g. a subset of it), resized / preloaded as configured, with the
    augmentation pipeline."""
    from structseg.data.transforms import train_transforms
    from structseg.engine.datasets import PreparedDataset

    d = cfg.data
    base = base if base is not None else raw_dataset(cfg, d.train_split)
    crop = as_pair(d.crop_size, "data.crop_size")
    if crop is None:
        raise ConfigError("data.crop_size is needed for training (an int or [height, width])")
    mean, std = normalization(cfg)
    transform = train_transforms(
        crop_size=crop,
        mean=mean,
        std=std,
        scale_range=(d.scale_range[0], d.scale_range[1]),
        hflip=d.hflip,
        rotation=d.rotation,
        color_jitter=d.color_jitter,
        ignore_index=base.classes.ignore_index,
    )
    return PreparedDataset(base, resize=as_pair(d.resize, "data.resize"), preload=d.preload,
                           transform=transform, progress=progress)


def build_eval_dataset(cfg: Config, split: str | None = None) -> SegmentationDataset:
    """A split for evaluation: full resolution, normalized, no augmentation."""
    from structseg.engine.datasets import PreparedDataset

    base = raw_dataset(cfg, split or cfg.data.val_split)
    return PreparedDataset(base, transform=eval_transform(cfg))


def run_datasets(cfg: Config, train_set: Dataset[Pair] | None = None, val_set: Dataset[Pair] | None = None, *,
                 progress: bool = False) -> tuple[Dataset[Pair], Dataset[Pair], ClassInfo]:
    """A training run's splits (built from the config where not given), checked before the first step: neither
    empty, every item readable (``data.check``), the same classes; returns them and their classes."""
    train: Dataset[Pair] = train_set if train_set is not None else build_train_dataset(cfg, progress=progress)
    val: Dataset[Pair] = val_set if val_set is not None else build_eval_dataset(cfg)
    if len(train) == 0:  # type: ignore[arg-type]
        raise DataError("the training split is empty")
    if len(val) == 0:  # type: ignore[arg-type]
        raise DataError("the validation split is empty")
    if cfg.data.check:
        check_splits({cfg.data.train_split: train, cfg.data.val_split: val}, progress=progress)
    classes: ClassInfo = train.classes  # type: ignore[attr-defined]
    check_classes(classes, val.classes, f"validation split '{cfg.data.val_split}'")  # type: ignore[attr-defined]
    return train, val, classes


def check_splits(splits: dict[str, object], progress: bool = False) -> None:
    """Read every item of each split the run will use (``{name: data set}``; sets already held in RAM were read
    when they were loaded) and fail before training with a :class:`DataError` that lists the bad files, instead
    of at the first evaluation hours later."""
    from structseg.data.base import SegmentationDataset, scan_dataset
    from structseg.engine.datasets import PreparedDataset

    lines = []
    for name, dataset in splits.items():
        if isinstance(dataset, PreparedDataset):
            if dataset.preloaded:
                continue
            dataset = dataset.base
        if not isinstance(dataset, SegmentationDataset):
            continue
        _, bad = scan_dataset(dataset, progress=progress, desc=f"check {name}")
        lines += [f"{name} split: {line}" for line in bad]
    if lines:
        more = f"\n  ... and {len(lines) - 5} more" if len(lines) > 5 else ""
        raise DataError(f"{len(lines)} bad item(s) found before training (structseg data check lists them all):\n  "
                        + "\n  ".join(lines[:5]) + more)


def check_classes(train: ClassInfo, other: ClassInfo, what: str) -> None:
    if train.num_classes != other.num_classes or tuple(train.names) != tuple(other.names):
        raise DataError(
            f"{what} has {other.num_classes} classes {list(other.names)[:6]}... but the training data has "
            f"{train.num_classes} {list(train.names)[:6]}..."
        )


def num_classes_for(cfg: Config, classes: ClassInfo) -> int:
    """The data set's class count; a configured ``model.num_classes`` must agree with it."""
    k = classes.num_classes
    if cfg.model.num_classes is not None and cfg.model.num_classes != k:
        raise DataError(
            f"model.num_classes={cfg.model.num_classes} but the data ({cfg.data.layout}) has {k} classes "
            f"({', '.join(classes.names)}); leave model.num_classes unset to take it from the data"
        )
    return k


# ------------------------------------------------------------------ model

def build_model_from_config(cfg: Config, num_classes: int, ignore_index: int = 255) -> nn.Module:
    """The configured model; with ``model.head: svm | ssvm`` wrapped with that head
    (:func:`structseg.engine.heads.build_structured`, ``ignore_index`` from the data)."""
    from structseg.models import build_model

    m = cfg.model
    kw: dict[str, Any] = dict(m.options)
    if m.head != "softmax" and m.aux:
        raise ConfigError(f"model.aux=true: the auxiliary classifier is not trained with model.head={m.head}; "
                          "set model.aux=false")
    model = build_model(m.name, num_classes, backbone=m.backbone, output_stride=m.output_stride,
                        weights=m.weights, aux=m.aux, **kw)
    if m.crf == "meanfield":
        if m.head != "softmax":
            raise ConfigError(f"model.crf=meanfield refines class logits; model.head={m.head} predicts MAP labels: "
                              "use one of them")
        from structseg.crf.layer import CRFRNN, MeanFieldCRF

        p, (mean, std) = _dense_layer_params(cfg)
        return CRFRNN(model, MeanFieldCRF(num_classes, mean=mean, std=std, **p))
    if m.head == "softmax":
        return model
    if m.head in ("cnn_crf", "message_net"):
        return build_cnn_crf(model, cfg, num_classes, ignore_index)
    from structseg.engine.heads import build_structured

    if m.structured.pairwise == "dense" and m.head == "ssvm":
        from structseg.crf.params import DenseCRFConfig

        p, (mean, std) = _dense_layer_params(cfg)
        return build_structured(model, m, num_classes, ignore_index, dense=DenseCRFConfig(**p), mean=mean, std=std)
    return build_structured(model, m, num_classes, ignore_index)


def _dense_layer_params(cfg: Config) -> tuple[dict[str, Any], Normalization]:
    """The ``crf:`` section's parameters for a dense-CRF layer inside a model (no thread setting: the model runs
    with the trainer's threads) and the input normalization it undoes to read colours."""
    p = cfg.crf.dense_params()
    p.pop("threads")
    return p, normalization(cfg)


def build_cnn_crf(model: nn.Module, cfg: Config, num_classes: int, ignore_index: int) -> nn.Module:
    """``model`` with Lin et al.'s CNN-CRF (``model.head: cnn_crf``) or their message estimators
    (``message_net``) on its penultimate features; options ``model.cnn_crf``."""
    from structseg.crf.cnn_crf import CNNCRFModel
    from structseg.crf.message_net import MessageNetModel
    from structseg.graph import above_below_offsets, surrounding_offsets

    c = cfg.model.cnn_crf
    if cfg.model.aux:
        raise ConfigError(f"model.aux=true: the auxiliary classifier is not trained with model.head={cfg.model.head}")
    edge_types = {}
    if c.surrounding:
        edge_types["surrounding"] = surrounding_offsets(c.surrounding)
    if c.above_below:
        edge_types["above_below"] = above_below_offsets(*c.above_below)
    base = cast("SegmentationModel", model)  # checked by the wrappers: forward_features and feature_channels
    if cfg.model.head == "message_net":
        return MessageNetModel(base, num_classes, train_backbone=c.train_backbone, feature_stride=c.feature_stride,
                               residual=c.residual, ignore_index=ignore_index, hidden=c.hidden,
                               edge_types=edge_types)
    return CNNCRFModel(base, num_classes, train_backbone=c.train_backbone, feature_stride=c.feature_stride,
                       residual=c.residual, pairwise=c.pairwise, pairwise_weight=c.pairwise_weight,
                       training=c.training, method=c.method, iterations=c.iterations,
                       damping=c.damping, ignore_index=ignore_index, hidden=c.hidden, edge_types=edge_types)


def fast_path_for(cfg: Config, device: torch.device) -> FastPath:
    """The model's fast path with ``train.amp`` applied on top."""
    from structseg.models import model_spec
    from structseg.models.fastpath import select_fast_path

    backbone = cfg.model.backbone
    if backbone is None:
        try:
            backbone = model_spec(cfg.model.name).default_backbone
        except ConfigError:  # an unknown name is reported where the model is built
            backbone = None
    base = select_fast_path(device, enabled=cfg.model.fast_path == "auto", backbone=backbone)
    amp = cfg.train.amp
    if amp == "auto":
        dtype = base.autocast_dtype
    elif amp == "off":
        dtype = None
    elif amp == "bf16":
        dtype = torch.bfloat16
    else:
        if device.type != "cuda":
            raise ConfigError("train.amp=fp16 needs a CUDA device; use bf16 or auto on the CPU")
        dtype = torch.float16
    return dataclasses.replace(base, autocast_dtype=dtype)


# ------------------------------------------------------------------- loss

class Criterion(nn.Module):
    """The configured loss (a :class:`~structseg.losses.WeightedSumLoss` of the ``loss:`` terms) plus the
    auxiliary head's, weighted by ``aux_weight``; returns the total and each part (``aux`` for the head's)."""

    def __init__(self, loss: WeightedSumLoss, aux_weight: float = 0.0) -> None:
        super().__init__()
        self.loss = loss
        self.aux_weight = aux_weight

    @property
    def part_names(self) -> list[str]:
        return self.loss.names + (["aux"] if self.aux_weight else [])

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                aux_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = self.loss(logits, target)
        parts = dict(self.loss.last_parts)
        if aux_logits is not None and self.aux_weight:
            aux_loss = self.loss(aux_logits, target)
            parts["aux"] = aux_loss.detach()
            total = total + self.aux_weight * aux_loss
        return total, parts


def build_criterion(cfg: Config, num_classes: int, ignore_index: int,
                    class_weights: torch.Tensor | None = None) -> Criterion:
    """The ``loss:`` section through :func:`structseg.losses.build_loss` (repeated terms are named
    ``dice``, ``dice_2``, ...), with the auxiliary head's weight when ``model.aux`` is on."""
    from structseg.losses import build_loss

    if not cfg.loss:
        raise ConfigError("loss: at least one loss term is needed")
    for i, term in enumerate(cfg.loss):
        reserved = sorted({"name", "weight"} & set(term.params))
        if reserved:
            raise ConfigError(f"loss.{i}.params: {', '.join(reserved)} belong(s) to the term itself, not its params")
    spec = [{"name": term.name, "weight": term.weight, **term.params} for term in cfg.loss]
    loss = build_loss(spec, num_classes=num_classes, ignore_index=ignore_index, class_weights=class_weights)
    assert isinstance(loss, WeightedSumLoss)
    return Criterion(loss, cfg.model.aux_weight if cfg.model.aux else 0.0)


# -------------------------------------------------------------- optimizer

def training_loss(cfg: Config, model: nn.Module, num_classes: int, ignore_index: int,
                  class_weights: torch.Tensor | None) -> Criterion | None:
    """The ``loss:`` section's criterion, or None for a model that trains with its own loss (``model(x, target)``:
    SVM heads, the CNN-CRF, the message estimators), which then weights classes itself (``class_weights`` on
    the model or its head)."""
    if not getattr(model, "trains_own_loss", False):
        return build_criterion(cfg, num_classes, ignore_index, class_weights)
    holder = model if hasattr(model, "class_weights") else getattr(model, "head", None)
    if class_weights is not None and hasattr(holder, "class_weights"):
        holder.class_weights = class_weights  # type: ignore[union-attr]
    return None


def param_groups(model: nn.Module, lr: float, backbone_lr_mult: float) -> list[dict[str, Any]]:
    """Backbone parameters at ``lr * backbone_lr_mult``, everything else at ``lr``."""
    backbone = getattr(model, "backbone", None)
    bb_ids = {id(p) for p in backbone.parameters()} if isinstance(backbone, nn.Module) else set()
    bb = [p for p in model.parameters() if p.requires_grad and id(p) in bb_ids]
    head = [p for p in model.parameters() if p.requires_grad and id(p) not in bb_ids]
    groups = []
    if head:
        groups.append({"params": head, "lr": lr, "name": "head"})
    if bb:
        groups.append({"params": bb, "lr": lr * backbone_lr_mult, "name": "backbone"})
    return groups


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (with ``momentum``), Adam or AdamW (``momentum`` as beta1) on :func:`param_groups`."""
    o = cfg.optim
    groups = param_groups(model, o.lr, o.backbone_lr_mult)
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    adam = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return adam(groups, lr=o.lr, betas=(o.momentum, 0.999), weight_decay=o.weight_decay)
