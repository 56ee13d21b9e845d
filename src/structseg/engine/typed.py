r"""Typed config sections: nested dataclasses built from plain (YAML) data with every key, type and range checked.

A field's annotation says what it takes: ``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, unions,
``list[...]``, ``dict[str, ...]``, another dataclass, or ``Annotated[T, Range(...)]`` for bounded numbers. Errors are
:class:`~structseg.errors.ConfigError`\ s naming the dotted key, raised when the data is read. Overrides
``a.b=value`` (values parsed as YAML) are set on the plain data before it is built.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import yaml

from structseg.errors import ConfigError

__all__ = ["Fraction", "NonNegative", "NonNegativeFloat", "Positive", "PositiveFloat", "Range", "Size", "build",
           "describe_value", "parse_override", "set_path", "type_name"]


@dataclass(frozen=True)
class Range:
    """The bounds of a numeric config field (``Annotated[int, Range(low=1)]``), checked when the config is
    read: ``low <= value <= high`` (strict with ``open_low`` / ``open_high``), and finite."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"
        if self.low is not None:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        return f"{'<' if self.open_high else '<='} {self.high:g}"

    def check(self, value: float, key: str) -> None:
        ok = math.isfinite(value)
        if ok and self.low is not None:
            ok = value > self.low if self.open_low else value >= self.low
        if ok and self.high is not None:
            ok = value < self.high if self.open_high else value <= self.high
        if not ok:
            raise _RangeError(f"config key '{key}' must be {self.describe()}, got {value!r}")


class _RangeError(ConfigError):
    """A value of the right type outside its field's :class:`Range` (a union stops trying other types)."""


Positive = Annotated[int, Range(low=1)]
NonNegative = Annotated[int, Range(low=0)]
PositiveFloat = Annotated[float, Range(low=0, open_low=True)]
NonNegativeFloat = Annotated[float, Range(low=0)]
Fraction = Annotated[float, Range(low=0, high=1)]
Size = Union[Positive, list[Positive]]  # noqa: UP007 - evaluated at runtime by the validator


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *meta = typing.get_args(tp)
        ranges = [m.describe() for m in meta if isinstance(m, Range)]
        return f"{type_name(base)} {' '.join(ranges)}".strip()
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def describe_value(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


# leaf types taken as they are, never converted (bool is not an int here, an int not a str)
_EXACT: dict[Any, Callable[[Any], bool]] = {
    type(None): lambda v: v is None,
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
}


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` checked against (and, for dataclasses, built as) ``tp``."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *meta = typing.get_args(tp)
        value = _convert(value, base, key)
        for m in meta:
            if isinstance(m, Range):
                m.check(value, key)
        return value
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(value, option, key)
            except _RangeError:
                raise
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
    if tp in _EXACT:
        if _EXACT[tp](value):
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
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            value = dataclasses.asdict(value)
        if not isinstance(value, dict):
            raise _type_error(key, tp, value)
        return build(tp, value, key)
    raise TypeError(f"config field {key}: unsupported annotation {tp!r}")  # programming error


def _type_error(key: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(f"config key '{key}' expects {type_name(tp)}, got {describe_value(value)}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def build(cls: type, values: dict[str, Any], prefix: str) -> Any:
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


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
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
