"""Run configuration: YAML files turned into typed, nested dataclasses.

Every field can be overridden from the command line with ``--set a.b=value``
(the value is parsed as YAML). Unknown keys and values of the wrong type raise
:class:`~structseg.errors.ConfigError` naming the dotted key, so a typo never
silently falls back to a default.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from structseg.errors import ConfigError

Size = Union[int, list[int]]  # noqa: UP007 - evaluated at runtime by the validator


@dataclass
class DataConfig:
    """Which data, how it is augmented and batched."""

    layout: str = "synthetic"
    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    val_split: str = "val"
    resize: Size | None = None  # training pairs resized once (area / nearest) before augmentation
    preload: bool = False  # decode every training pair into RAM once
    crop_size: Size | None = None
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    hflip: float = 0.5
    rotation: float = 0.0
    color_jitter: float = 0.0
    batch_size: int = 8  # global: split across distributed processes
    workers: int = 0
    eval_batch_size: int = 1
    class_weights: Literal["none", "enet", "median", "inverse"] = "none"
    # input normalisation (RGB in [0, 1]); null: the model's weights' own (their metadata for weights: imagenet,
    # the source run's with model.init_from, else the ImageNet statistics). A run records the resolved values.
    mean: list[float] | None = None
    std: list[float] | None = None


InferenceSolver = Literal["bp", "expansion", "icm", "lp", "milp", "ilp"]  # structseg.structured.list_solvers()


@dataclass
class StructuredHeadConfig:
    """Options of the SVM heads (``model.head: svm | ssvm``, :mod:`structseg.engine.heads`); unused with softmax.

    Both heads read the base model's penultimate features, average-pooled by
    ``feature_stride`` (a coarser grid makes ssvm inference cheaper). svm: a
    per-pixel Crammer-Singer hinge with ``margin``. ssvm: unary + pairwise
    (``pairwise``, on a ``connectivity`` grid: 4, 8 or a range box [ry, rx]),
    structured hinge with loss-augmented inference by ``solver``; MAP inference at
    evaluation / prediction by ``eval_solver`` (null: ``solver``). ``solver_options``
    go to both solvers (e.g. ``{max_iter: 30}`` for bp, ``{truncate: true}`` for expansion).
    """

    feature_stride: int = 1
    margin: float = 1.0
    pairwise: Literal["agreement", "full"] = "agreement"
    connectivity: int | list[int] = 4
    solver: InferenceSolver = "bp"
    eval_solver: InferenceSolver | None = None
    solver_options: dict[str, Any] = field(default_factory=dict)
    loss_normalize: bool = True  # divide each image's structured hinge by its labelled nodes
    downsample: Literal["majority", "nearest"] = "majority"  # the target brought to the feature grid

    def __post_init__(self) -> None:
        key = "config key 'model.structured"
        if self.feature_stride < 1:
            raise ConfigError(f"{key}.feature_stride' must be >= 1, got {self.feature_stride}")
        if not math.isfinite(self.margin) or self.margin <= 0:
            raise ConfigError(f"{key}.margin' must be a positive number, got {self.margin}")
        c = self.connectivity
        box = isinstance(c, list) and len(c) == 2 and min(c) >= 0 and sum(c) > 0
        if c not in (4, 8) and not box:
            raise ConfigError(f"{key}.connectivity' must be 4, 8 or a range box [ry, rx] (non-negative, "
                              f"not [0, 0]), got {c!r}")


@dataclass
class ModelConfig:
    """Architecture passed to :func:`structseg.models.build_model`.

    ``head``: "softmax" (the model's own classifier, trained with the ``loss`` section), or an SVM
    head on the model's penultimate features, trained with its own hinge loss: "svm" (per pixel) or
    "ssvm" (structured, MAP inference); options in ``structured`` (see :class:`StructuredHeadConfig`).
    ``init_from``: start a new run from another run's (or a file's) model weights
    (:mod:`structseg.engine.init_from`).
    """

    name: str = "deeplabv3plus"
    backbone: str | None = None
    num_classes: int | None = None  # None: taken from the data set's classes
    output_stride: int | None = None
    weights: str | None = None
    # fine-tuning: a run directory (its best checkpoint, else its latest) or a checkpoint / state-dict file
    # whose model weights start this new run (a different class count re-initialises the classifier);
    # see structseg.engine.init_from. Ignored by train --resume.
    init_from: str | None = None
    aux: bool = False
    aux_weight: float = 0.4
    fast_path: Literal["auto", "off"] = "auto"
    head: Literal["softmax", "svm", "ssvm"] = "softmax"
    options: dict[str, Any] = field(default_factory=dict)
    structured: StructuredHeadConfig = field(default_factory=StructuredHeadConfig)


@dataclass
class LossTerm:
    """One term of the training loss: ``weight * build_loss(name, **params)``."""

    name: str = "cross_entropy"
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    backbone_lr_mult: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float | None = None


@dataclass
class ScheduleConfig:
    """Learning-rate factor per iteration; see :mod:`structseg.engine.schedules`."""

    name: Literal["constant", "step", "poly", "warmup_cosine"] = "poly"
    step_size: int = 1000
    gamma: float = 0.1
    power: float = 0.9
    warmup_iters: int = 0
    min_lr_ratio: float = 0.0
    # with train.max_minutes: progress = max(iteration / iterations, training time / max_minutes), so the
    # decay ends at the time budget however fast the machine turns out to be
    by_time: bool = False


@dataclass
class TrainConfig:
    iterations: int = 1000
    eval_every: int | Literal["epoch"] = 200
    checkpoint_every: int = 200
    log_every: int = 10
    seed: int = 0
    deterministic: bool = False
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    sync_bn: bool = False
    resume: bool = False
    device: str = "auto"
    progress: bool = True
    max_minutes: float | None = None  # stop (evaluate, checkpoint) after this much training time
    num_threads: int | None = None  # torch intra-op threads; None leaves torch's default


@dataclass
class EvalConfig:
    """Test-time inference: whole image or sliding window, optional flip / multi-scale."""

    mode: Literal["whole", "slide"] = "whole"
    window: Size | None = None
    stride: Size | None = None
    blend: Literal["gaussian", "uniform"] = "gaussian"
    flip: bool = False
    scales: list[float] = field(default_factory=lambda: [1.0])


@dataclass
class CRFConfig:
    """Dense-CRF refinement of the probabilities in ``structseg eval`` / ``predict``
    (:class:`structseg.crf.DenseCRFConfig`, pydensecrf's names). ``threads``: CPU
    intra-op threads while the CRF runs; 1 is the safe choice on a shared CPU."""

    mode: Literal["none", "dense"] = "none"
    iterations: int = 5
    sxy_gaussian: float = 3.0
    compat_gaussian: float = 3.0
    sxy_bilateral: float = 80.0
    srgb: float = 13.0
    compat_bilateral: float = 10.0
    threads: int | None = 1

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ConfigError(f"config key 'crf.iterations' must be >= 0, got {self.iterations}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"config key 'crf.threads' must be >= 1 or null, got {self.threads}")
        for name in ("sxy_gaussian", "compat_gaussian", "sxy_bilateral", "srgb", "compat_bilateral"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"config key 'crf.{name}' must be a positive number, got {value}")

    def dense_params(self) -> dict[str, Any]:
        """The keyword arguments of :class:`structseg.crf.DenseCRFConfig`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "mode"}


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: list[LossTerm] = field(default_factory=lambda: [LossTerm()])
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    crf: CRFConfig = field(default_factory=CRFConfig)
    run_dir: str | None = None


# ---------------------------------------------------------------- validation

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` checked against (and, for dataclasses, built as) ``tp``."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(value, option, key)
            except ConfigError:
                continue
        raise _type_error(key, tp, value)
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads a bare off / on as a boolean
            word = "on" if value else "off"
            if word in typing.get_args(tp):
                return word
        if value in typing.get_args(tp) and type(value) in {type(a) for a in typing.get_args(tp)}:
            return value
        raise _type_error(key, tp, value)
    if tp is type(None):
        if value is None:
            return None
        raise _type_error(key, tp, value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(key, tp, value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise _type_error(key, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _type_error(key, tp, value)
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise _type_error(key, tp, value)
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{key}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(key, tp, value)
        return {str(k): v for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            value = dataclasses.asdict(value)
        if not isinstance(value, dict):
            raise _type_error(key, tp, value)
        return _build(tp, value, key)
    raise TypeError(f"config field {key}: unsupported annotation {tp!r}")  # programming error


def _type_error(key: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {_describe(value)}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            where = f"'{prefix}.{key}'" if prefix else f"'{key}'"
            raise ConfigError(f"unknown config key {where} (known here: {', '.join(names)})")
    kwargs = {}
    for name in names:
        if name in values:
            dotted = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _convert(values[name], hints[name], dotted)
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any] | None) -> Config:
    """Build a :class:`Config` from plain data, defaults filling what is missing."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping at the top level, got {_describe(values)}")
    return _build(Config, values, "")


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# ----------------------------------------------------------------- overrides

def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree[a][b]... = value`` following ``a.b...``; list items by index."""
    parts = dotted.split(".")
    if any(p == "" for p in parts):
        raise ConfigError(f"bad override key '{dotted}'")
    node: Any = tree
    walked: list[str] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        walked.append(part)
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f"override '{dotted}': '{'.'.join(walked)}' is not an item of a list of {len(node)}"
                )
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{'.'.join(walked[:-1])}' is not a section")
        if last:
            node[part] = value
        else:
            if part not in node:
                # an unknown section or a free-form dict; validation names the key
                node[part] = {}
            elif node[part] is None:
                node[part] = {}
            node = node[part]


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=value"`` -> ``("a.b", yaml_value)``."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc})") from exc
    return key, value


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """Return a new config with every ``a.b=value`` override applied and validated."""
    tree = copy.deepcopy(config_to_dict(cfg))
    for text in overrides:
        key, value = parse_override(text)
        _set_path(tree, key, value)
    return config_from_dict(tree)


# -------------------------------------------------------------------- files

DEFAULT_CONFIG = "default.yaml"


def default_config_text() -> str:
    """The embedded default config (trains on the synthetic data set)."""
    return resources.files("structseg.engine").joinpath(DEFAULT_CONFIG).read_text(encoding="utf-8")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping, got {_describe(data)}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (the embedded default when ``path`` is None) and apply overrides."""
    if path is None:
        data = yaml.safe_load(default_config_text()) or {}
        source = "embedded default config"
    else:
        data = read_yaml(path)
        source = str(path)
    try:
        cfg = config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return apply_overrides(cfg, overrides)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (loadable again by :func:`load_config`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_config(cfg), encoding="utf-8")
    return path


def as_pair(size: Size | None, key: str = "size") -> tuple[int, int] | None:
    """An int or ``[h, w]`` config value as ``(h, w)``."""
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    if len(size) == 1:
        return (size[0], size[0])
    if len(size) != 2:
        raise ConfigError(f"config key '{key}' expects an int or [height, width], got {size!r}")
    return (int(size[0]), int(size[1]))
