"""Fine-tuning: ``model.init_from`` starts a *new* run from another run's model weights.

``model.init_from`` names a run directory (its ``checkpoints/best.pt``, else ``checkpoints/latest.pt``) or
a file: a structseg checkpoint, or a plain state dict (``.pt`` / ``.pth`` / ``.bin`` / ``.safetensors``
with the model's keys; a ``module.`` prefix is stripped). Files are read without executing code
(``torch.load(weights_only=True)``, safetensors). Only the model weights are taken: the trainer starts the
optimizer, the schedule and the iteration count fresh. ``train --resume`` ignores the field (the run's
own checkpoint restores everything).

Keys are matched by name and shape:

- tensors whose shapes differ only where the class count goes (the head's final score layer(s), the
  auxiliary head's classifier; FCN's score upsampling) stay as built when the source has another class
  count, so a CamVid run can start a VOC run;
- a plain network can start a run with an SVM head (``model.head: svm | ssvm``, whose state dict holds the
  network under ``base.`` and the head under ``head.``): the network goes to ``base.*``, the SVM head starts
  as built. An SVM-head run can start a plain run (its ``base.*``; its SVM head is left out), and another
  SVM-head run (the head too, when it has the same keys; a head of another class count or kind stays as
  built);
- an auxiliary head (``model.aux``) on one side only is left as built, or left out;
- anything else (missing, unexpected or mis-shaped keys: another architecture, backbone or model option)
  is a :class:`~structseg.errors.CheckpointError` naming the file and the keys.

The dense CRF of ``crf:`` has no weights: it is post-processing and plays no part here.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from structseg.engine.config import Config
from structseg.engine.rundir import RunDir
from structseg.errors import CheckpointError, ConfigError
from structseg.models.weights import _SUFFIXES, _names, read_state_dict

__all__ = ["InitResult", "InitSource", "check_init_from", "init_model_from", "read_init_source",
           "resolve_init_from"]

KEY = "config key 'model.init_from'"
_AUX = ("aux_classifier.", "base.aux_classifier.")


def _expected() -> str:
    return f"a run directory or a {' / '.join(_SUFFIXES)} file"


def resolve_init_from(value: str | os.PathLike[str]) -> tuple[Path, str]:
    """The file ``model.init_from`` names and what it is (for the log): a run directory's best
    checkpoint, else its latest; a :class:`ConfigError` naming the key when there is nothing to read."""
    path = Path(value).expanduser()
    if path.is_dir():
        run = RunDir(path)
        if run.best.is_file():
            return run.best, f"the best checkpoint of run {path}"
        if run.latest.is_file():
            return run.latest, f"the latest checkpoint of run {path}, which has no {run.best.name}"
        raise ConfigError(f"{KEY}: run directory {path} has no checkpoint ({run.best.name} or "
                          f"{run.latest.name} in {run.checkpoints})")
    if not path.exists():
        raise ConfigError(f"{KEY}: {path} does not exist (expected {_expected()})")
    if not path.is_file() or path.suffix not in _SUFFIXES:
        raise ConfigError(f"{KEY}: {path} is not {_expected()}")
    return path, f"file {path}"


def check_init_from(cfg: Config) -> None:
    """The cheap check when a training config is loaded: ``model.init_from`` (when set) exists and is
    a run directory with a checkpoint or a weights file of a known suffix."""
    if cfg.model.init_from is not None:
        resolve_init_from(cfg.model.init_from)


@dataclass
class InitSource:
    """The weights ``model.init_from`` names; ``num_classes`` / ``config`` when a structseg checkpoint says."""

    path: Path
    what: str
    state: dict[str, Tensor]
    num_classes: int | None = None
    config: dict[str, Any] | None = None


def _reason(exc: Exception) -> str:
    """The line of a ``torch.load`` error that says what is wrong (its weights_only refusal is a page long)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "WeightsUnpickler error" in line:  # "... Unsupported global: GLOBAL exec was not an allowed global ..."
            return line.split(". Please use")[0].removeprefix("WeightsUnpickler error: ")
    return lines[0] if lines else type(exc).__name__


def read_init_source(value: str | os.PathLike[str]) -> InitSource:
    """Read what ``model.init_from`` names onto the CPU, without executing code."""
    path, what = resolve_init_from(value)
    if path.suffix == ".safetensors":
        return InitSource(path, what, read_state_dict(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a foreign pickle (weights_only refuses it), a truncated file, ...
        raise CheckpointError(f"model.init_from: {path} cannot be read as weights (torch.load with "
                              f"weights_only=True, which runs no code): {_reason(exc)}") from exc
    if isinstance(obj, dict) and "format" in obj and isinstance(obj.get("model"), dict):  # a structseg checkpoint
        state = obj["model"]
        if not all(isinstance(v, Tensor) for v in state.values()):
            raise CheckpointError(f"model.init_from: checkpoint {path} holds a 'model' entry that is not a state dict")
        classes = obj.get("classes")
        names = classes.get("names") if isinstance(classes, dict) else None
        config = obj.get("config") if isinstance(obj.get("config"), dict) else None
        state = {k.removeprefix("module."): v for k, v in state.items()}
        return InitSource(path, what, state, len(names) if isinstance(names, (list, tuple)) else None, config)
    return InitSource(path, what, read_state_dict(path))  # a plain state dict (read_state_dict checks it)


@dataclass
class InitResult:
    """What :func:`init_model_from` did: the keys taken, those left as built, the source's keys left out,
    and the log lines that say so."""

    source: InitSource
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)  # classifier tensors of another class count
    left_as_built: list[str] = field(default_factory=list)  # a new SVM / auxiliary head
    left_out: list[str] = field(default_factory=list)  # the source's SVM / auxiliary head
    messages: list[str] = field(default_factory=list)


# what a wrapper model adds on top of its network (under ``base.*``): an SVM head, or a CRF-as-RNN layer
_PARTS = {"head.": "SVM head", "crf.": "CRF layer"}


def _wrapped(keys: Any) -> bool:
    """Keys of a wrapper model (an SVM head's :class:`~structseg.structured.models.StructuredSegmenter` or a
    CRF-as-RNN :class:`~structseg.crf.layer.CRFRNN`): ``base.*`` plus ``head.*`` / ``crf.*``."""
    keys = list(keys)
    return any(k.startswith("base.") for k in keys) and all(k.startswith(("base.", *_PARTS)) for k in keys)


def _parts(keys: Any) -> list[str]:
    return [k for k in keys if k.startswith(tuple(_PARTS))]


def _part_names(keys: Any) -> str:
    return " and ".join(sorted({f"{_PARTS[p]} ({p}*)" for k in keys for p in _PARTS if k.startswith(p)})) or "none"


def _class_dims_only(src: tuple[int, ...], own: tuple[int, ...], k_src: int | None, k_own: int) -> bool:
    """The two shapes differ only in dimensions that hold the class count (``k_src`` there, ``k_own`` here)."""
    if len(src) != len(own) or k_src is None or k_src == k_own:
        return False
    diff = [i for i in range(len(own)) if src[i] != own[i]]
    return bool(diff) and all(own[i] == k_own and src[i] == k_src for i in diff)


def _infer_source_classes(pairs: list[tuple[tuple[int, ...], tuple[int, ...]]], k_own: int) -> int | None:
    """The source's class count read off mis-shaped tensors (a plain state dict does not say it): the single
    value the source has wherever this model has ``k_own`` and the source differs."""
    seen = {s[i] for s, o in pairs if len(s) == len(o) for i in range(len(o)) if s[i] != o[i] and o[i] == k_own}
    return seen.pop() if len(seen) == 1 else None


def _align(state: dict[str, Tensor],
           own: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str], list[str], list[str]]:
    """Source keys renamed to this model's naming: (state, keys of this model left as built, source keys
    left out, notes). Bridges a plain network and an SVM-head model, and an auxiliary head on one side."""
    fresh: list[str] = []
    left_out: list[str] = []
    notes: list[str] = []
    src_w, own_w = _wrapped(state), _wrapped(own)
    if own_w and not src_w:
        state = {f"base.{k}": v for k, v in state.items()}
        fresh = _parts(own)
        notes.append(f"the source is a plain network: it goes to base.*, the {_part_names(own)} starts as built")
    elif src_w and not own_w:
        left_out = _parts(state)
        state = {k.removeprefix("base."): v for k, v in state.items() if k.startswith("base.")}
        notes.append(f"the source's {_part_names(left_out)} is left out; its network (base.*) is taken, including its "
                     "own classifier")
    elif src_w and own_w:
        src_parts, own_parts = sorted(_parts(state)), sorted(_parts(own))
        if src_parts != own_parts:  # another head or layer (svm <-> ssvm, a CRF layer <-> an SVM head, ...)
            left_out, fresh = src_parts, own_parts
            state = {k: v for k, v in state.items() if k not in set(src_parts)}
            notes.append(f"the source's {_part_names(src_parts)} differs from this run's: this run's "
                         f"{_part_names(own_parts)} starts as built")
    src_aux = [k for k in state if k.startswith(_AUX)]
    own_aux = [k for k in own if k.startswith(_AUX)]
    if src_aux and not own_aux:
        left_out += src_aux
        state = {k: v for k, v in state.items() if k not in set(src_aux)}
        notes.append("the source's auxiliary head (aux_classifier.*) is left out (model.aux=false here)")
    elif own_aux and not src_aux:
        fresh += own_aux
        notes.append("the source has no auxiliary head: aux_classifier.* starts as built")
    return state, fresh, left_out, notes


def source_normalization(src: InitSource) -> tuple[list[float], list[float]] | None:
    """The input (mean, std) the source was trained with, when its checkpoint's config tells: its
    ``data.mean``/``data.std``, or (a run recorded before those fields) what its config resolves to."""
    if src.config is None:
        return None
    data = src.config.get("data")
    if isinstance(data, dict) and data.get("mean") is not None and data.get("std") is not None:
        return [float(v) for v in data["mean"]], [float(v) for v in data["std"]]
    from structseg.engine.build import normalization
    from structseg.engine.config import config_from_dict
    from structseg.errors import StructsegError

    try:
        mean, std = normalization(config_from_dict(src.config))
    except StructsegError:  # a config of another structseg version: nothing to go by
        return None
    return [float(v) for v in mean], [float(v) for v in std]


def inherit_normalization(cfg: Config, src: InitSource) -> str | None:
    """Set ``data.mean``/``data.std`` to the source's (:func:`source_normalization`) unless the config sets
    them; returns the log line (also when explicit values differ from the source's), else None."""
    inherited = source_normalization(src)
    if inherited is None:
        return None
    mean, std = inherited
    d = cfg.data
    if d.mean is None and d.std is None:
        d.mean, d.std = mean, std
        return f"model.init_from: input normalization of the source taken: data.mean={mean} data.std={std}"
    if d.mean is not None and d.std is not None and (
            [float(v) for v in d.mean] != mean or [float(v) for v in d.std] != std):
        return (f"model.init_from: data.mean={list(d.mean)} data.std={list(d.std)} as set, but the source was "
                f"trained with data.mean={mean} data.std={std}")
    return None


def _describe_source(src: InitSource) -> str:
    model = (src.config or {}).get("model")
    if not isinstance(model, dict):
        return ""
    backbone = f", backbone {model['backbone']}" if model.get("backbone") else ""
    return f" (the source is model {model.get('name')}{backbone}, head {model.get('head', 'softmax')})"


def init_model_from(model: nn.Module, value: str | os.PathLike[str] | InitSource, num_classes: int) -> InitResult:
    """Load the weights ``model.init_from`` names into ``model`` (in place; see the module docstring for
    the rules); ``num_classes`` is this run's class count. Returns what was done and the log lines."""
    src = value if isinstance(value, InitSource) else read_init_source(value)
    own = model.state_dict()
    state, fresh, left_out, notes = _align(src.state, own)
    where = f"{src.path}" if src.what == f"file {src.path}" else f"{src.path} ({src.what})"
    fresh_set = set(fresh)
    missing = [k for k in own if k not in state and k not in fresh_set and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shaped = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    pairs = [(tuple(state[k].shape), tuple(own[k].shape)) for k in shaped]
    k_src = src.num_classes if src.num_classes is not None else _infer_source_classes(pairs, num_classes)
    own_w = _wrapped(own)
    classifier = [k for k, (s, o) in zip(shaped, pairs)
                  if _class_dims_only(s, o, k_src, num_classes) or (own_w and k.startswith(tuple(_PARTS)))]
    other = [f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})" for k in shaped if k not in classifier]
    if missing or unexpected or other:
        parts = [f"missing keys: {_names(missing)}" if missing else "",
                 f"unexpected keys: {_names(unexpected)}" if unexpected else "",
                 f"shape mismatches: {_names(other)}" if other else ""]
        raise CheckpointError(
            f"model.init_from: {where} does not fit the model{_describe_source(src)}; only the classifier may "
            f"differ (in its class count), the rest must be the same architecture, backbone and model options: "
            + "; ".join(p for p in parts if p)
        )
    skip = set(classifier)
    to_load = {k: state[k] for k in own if k in state and k not in skip}
    model.load_state_dict(to_load, strict=False)
    result = InitResult(src, loaded=list(to_load), reinitialised=classifier,
                        left_as_built=[k for k in own if k in fresh_set], left_out=left_out)
    result.messages.append(f"model.init_from: model weights from {where}: {len(to_load)} of {len(own)} tensors "
                           "taken; the optimizer, schedule and iteration count start fresh")
    if classifier:
        counts = f"{k_src} classes in the source, {num_classes} here" if k_src not in (None, num_classes) \
            else "another SVM head"
        result.messages.append(f"model.init_from: classifier re-initialised (left as built; {counts}): "
                               f"{_names(classifier)}")
    result.messages += [f"model.init_from: {n}" for n in notes]
    return result


def init_source_for(cfg: Config, *, resuming: bool, latest: Path, say: Callable[[str], None]) -> InitSource | None:
    """What a starting training run takes from ``model.init_from``: None when unset, or when the run resumes
    from its own checkpoint ``latest`` (which restores everything); else the source, whose input
    normalization the run takes unless ``data.mean``/``data.std`` are set."""
    value = cfg.model.init_from
    if value is None:
        return None
    if resuming:
        say(f"model.init_from={value} ignored: resuming from {latest}, which restores the model, optimizer "
            "and schedule")
        return None
    source = read_init_source(value)
    note = inherit_normalization(cfg, source)
    if note:
        say(note)
    return source


def build_run_model(cfg: Config, num_classes: int, ignore_index: int, source: InitSource | None,
                    model: nn.Module | None, say: Callable[[str], None]) -> tuple[nn.Module, InitResult | None]:
    """A training run's model: ``model`` or the config's, its weights from ``model.init_from``'s ``source``
    when given (which replaces ``model.weights``: those are not loaded); SVM-head runs are checked."""
    from structseg.engine.build import build_model_from_config

    build_cfg = cfg
    if source is not None and cfg.model.weights is not None:
        import dataclasses

        build_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, weights=None))
        say(f"model.weights={cfg.model.weights} not loaded: model.init_from replaces every backbone weight")
    model = model if model is not None else build_model_from_config(build_cfg, num_classes, ignore_index)
    if getattr(model, "map_inference", False):  # model.head: svm | ssvm
        from structseg.engine.heads import check_structured_run

        check_structured_run(cfg, say)
    if source is None:
        return model, None
    result = init_model_from(model, source, num_classes)
    result.source.state = {}
    for line in result.messages:
        say(line)
    return model, result
