"""Instance-segmentation run configuration: YAML -> typed dataclasses, ``--set a.b=value`` overrides.

Unknown keys and values of the wrong type raise :class:`ConfigError` naming the
dotted key. The file carries ``task: instance`` so that a generic ``structseg train``
can tell it from a semantic config.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from structseg.engine.config import load_config


@dataclass
class InstanceDataConfig:
    layout: str = "synthetic"
    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # extra build_dataset keywords
    train_split: str = "train"
    val_split: str = "val"
    background: list[int] = field(default_factory=list)  # semantic classes that are never instances
    hflip: float = 0.5
    batch_size: int = 2
    workers: int = 0
    limit_train: int | None = None
    limit_val: int | None = None


@dataclass
class InstanceModelConfig:
    backbone: str = "resnet18"
    weights: str | None = None  # a Mask R-CNN state dict / checkpoint to start from
    weights_backbone: str | None = None  # null or "imagenet"
    trainable_layers: int | None = None
    anchor_sizes: list[int] | None = None
    box_head_dim: int = 1024  # torchvision's; smaller is faster on the CPU
    mask_head_layers: list[int] = field(default_factory=lambda: [256, 256, 256, 256])
    min_size: int = 800
    max_size: int = 1333
    options: dict[str, Any] = field(default_factory=dict)  # more torchvision MaskRCNN keywords


@dataclass
class InstanceTrainConfig:
    iterations: int = 200
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 50
    grad_clip: float | None = 10.0
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate once, at the end
    checkpoint_every: int = 100
    seed: int = 0
    progress: bool = True
    tensorboard: bool = True
    device: str = "auto"  # "auto": cuda when available
    num_threads: int | None = None


@dataclass
class InstanceEvalConfig:
    mask_threshold: float = 0.5  # mask probability -> binary mask
    draw_threshold: float = 0.5  # predictions drawn by `instance predict`
    figures: int = 4  # validation images drawn after training / evaluation


@dataclass
class InstanceConfig:
    task: Literal["instance"] = "instance"
    data: InstanceDataConfig = field(default_factory=InstanceDataConfig)
    model: InstanceModelConfig = field(default_factory=InstanceModelConfig)
    train: InstanceTrainConfig = field(default_factory=InstanceTrainConfig)
    eval: InstanceEvalConfig = field(default_factory=InstanceEvalConfig)
    run_dir: str | None = None


def load_instance_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> InstanceConfig:
    """Read a YAML instance config (defaults when ``path`` is None) and apply overrides: the engine's loader
    (:func:`structseg.engine.config.load_config`) on :class:`InstanceConfig`."""
    return load_config(path, overrides, InstanceConfig)
