"""Run configuration: YAML files turned into typed, nested dataclasses.

Every field can be overridden from the command line with ``--set a.b=value``
(the value is parsed as YAML). Unknown keys and values of the wrong type raise
:class:`~structseg.errors.ConfigError` naming the dotted key, so a typo never
silently falls back to a default.
"""
from __future__ import annotations

import copy
import dataclasses
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


@dataclass
class ModelConfig:
    """Architecture passed to :func:`structseg.models.build_model`."""

    name: str = "deeplabv3plus"
    backbone: str | None = None
    num_classes: int | None = None  # None: taken from the data set's classes
    output_stride: int | None = None
    weights: str | None = None
    aux: bool = False
    aux_weight: float = 0.4
    fast_path: Literal["auto", "off"] = "auto"
    head: str = "softmax"
    options: dict[str, Any] = field(default_factory=dict)


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
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: list[LossTerm] = field(default_factory=lambda: [LossTerm()])
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
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
