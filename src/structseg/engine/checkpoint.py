"""Checkpoints: atomic writes, ``weights_only`` loading, RNG capture, shape checks.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts
(no pickled objects), so ``torch.load(path, weights_only=True)`` reads it.
Writes go to a temporary file in the same directory, are fsynced, then
``os.replace``-d over the target: a crash mid-write leaves the old file intact.
"""
from __future__ import annotations

import math
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from structseg.data.base import ClassInfo, rgb
from structseg.engine.config import Config, config_from_dict, config_to_dict
from structseg.errors import CheckpointError, ConfigError

FORMAT_VERSION = 1


def save_atomic(obj: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` to ``path`` so that readers see the old or the new file, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.filename is None:  # e.g. disk full inside torch.save: name the file
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; a clear error when missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated file, foreign pickle, ...
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"checkpoint {path} holds no 'model' state dict")
    version = ckpt.get("format", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format {version!r}; this structseg reads format "
                              f"{FORMAT_VERSION} and older: upgrade structseg to read it")
    return ckpt


@dataclass
class TrainingProgress:
    """The counters a training checkpoint carries besides the states of the model and the optimizer."""

    iteration: int = 0
    best_miou: float = -math.inf
    best_iteration: int = -1
    train_seconds: float = 0.0


def training_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                        rng: list[dict[str, Any]], progress: TrainingProgress, cfg: Config, classes: ClassInfo,
                        steps_per_epoch: int, world_size: int) -> dict[str, Any]:
    """The training checkpoint (format :data:`FORMAT_VERSION`): every state exact resume needs, the RNG state of
    each process, the config and the classes, as plain data that ``weights_only`` loading reads."""
    return {
        "format": FORMAT_VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "rng": rng,
        "iteration": progress.iteration,
        "epoch": progress.iteration / steps_per_epoch,
        "best_miou": progress.best_miou if math.isfinite(progress.best_miou) else -1.0,
        "best_iteration": progress.best_iteration,
        "train_seconds": progress.train_seconds,
        "config": config_to_dict(cfg),
        "classes": classes_to_dict(classes),
        "world_size": world_size,
    }


def restore_training(ckpt: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                     scaler: Any, source: str) -> TrainingProgress:
    """Load a :func:`training_checkpoint` into the model, optimizer, scheduler and scaler; returns its counters.
    A state that does not fit is a :class:`CheckpointError` naming ``source``."""
    load_model_state(model, ckpt["model"], source=source)
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{source}: optimizer state does not fit: {exc}") from None
    if ckpt.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(ckpt["scaler"])
    return TrainingProgress(int(ckpt["iteration"]), float(ckpt.get("best_miou", -1.0)),
                            int(ckpt.get("best_iteration", -1)), float(ckpt.get("train_seconds", 0.0)))


def resume_training(ckpt: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    scaler: Any, cfg: Config, *, rank: int, world_size: int,
                    source: str) -> tuple[TrainingProgress, list[str]]:
    """Resume a run from its ``latest.pt``: :func:`restore_training`, the schedule put where the config and the
    stored progress say, the optimizer's stored hyperparameters adopted, this process's random streams restored;
    returns the counters and what to tell the user."""
    from structseg.engine.schedules import follow_config, schedule_position, set_lr

    progress = restore_training(ckpt, model, optimizer, scheduler, scaler, source=f"checkpoint {source}")
    follow_config(scheduler, cfg.schedule, cfg.train.iterations)
    notes = [f"optim.{key}={now} is overruled by {source}: the optimizer resumes with its stored optim.{key}="
             f"{stored} (recorded in config.yaml)" for key, now, stored in adopt_stored_optim(ckpt.get("config"),
                                                                                             cfg.optim)]
    set_lr(scheduler, schedule_position(cfg.schedule, cfg.train, progress.iteration, progress.train_seconds))
    if progress.iteration > cfg.train.iterations:
        raise ConfigError(f"checkpoint is at iteration {progress.iteration}, beyond train.iterations="
                          f"{cfg.train.iterations}")
    rng = ckpt.get("rng") or []
    if len(rng) == world_size:
        restore_rng_state(rng[rank])
    else:
        notes.append(f"checkpoint from {len(rng)} processes, now {world_size}: random streams are reseeded "
                     "(resume is not bit-exact)")
    return progress, notes


def classes_to_dict(classes: ClassInfo) -> dict[str, Any]:
    """A data set's classes as plain data for a checkpoint."""
    return {"names": list(classes.names), "palette": [list(c) for c in classes.palette],
            "ignore_index": int(classes.ignore_index), "ignore_color": list(classes.ignore_color)}


def classes_from_dict(d: dict[str, Any]) -> ClassInfo:
    return ClassInfo(names=tuple(d["names"]), palette=tuple(rgb(c) for c in d["palette"]),
                     ignore_index=int(d["ignore_index"]), ignore_color=rgb(d.get("ignore_color", (0, 0, 0))))


def config_of_checkpoint(ckpt: dict[str, Any]) -> Config:
    """The config stored in a checkpoint."""
    if "config" not in ckpt:
        raise CheckpointError("checkpoint carries no config; pass one with -c")
    return config_from_dict(ckpt["config"])


# --------------------------------------------------------------------- RNG

def adopt_stored_optim(stored: Any, optim: Any) -> list[tuple[str, Any, Any]]:
    """The optimizer resumes with its stored hyperparameters (base learning rates, weight decay, momentum),
    whatever the config says now: set the stored values into ``optim`` (the ``optim:`` section), so config.yaml
    records what is used, and return ``(key, value now, stored value)`` for each overruled one."""
    stored_optim = stored.get("optim") if isinstance(stored, dict) else None
    if not isinstance(stored_optim, dict):
        return []
    overruled = []
    for key in ("lr", "backbone_lr_mult", "momentum", "weight_decay"):
        if key in stored_optim and stored_optim[key] != getattr(optim, key):
            overruled.append((key, getattr(optim, key), stored_optim[key]))
            setattr(optim, key, stored_optim[key])
    return overruled


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states as tensors and lists."""
    version, py_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": list(py_state), "gauss": gauss},
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["gauss"])
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


# ------------------------------------------------------------------ model

def _preview(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if shaped:
        problems.append(f"shape mismatch in {_preview(shaped, 4)}")
    if missing:
        problems.append(f"missing keys {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_preview(unexpected)}")
    if problems:
        raise CheckpointError(
            f"{source} does not fit the model (was the model config changed?): " + "; ".join(problems)
        )


def non_finite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of ``state`` holding NaN or infinity."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strictly load ``state`` into ``model`` after :func:`check_state_dict`; weights holding NaN or infinity
    are a :class:`CheckpointError` naming ``source`` (never evaluated, predicted with or resumed)."""
    check_state_dict(model, state, source)
    bad = non_finite_tensors(state)
    if bad:
        raise CheckpointError(f"{source}: weights are not finite (NaN or infinite values in {_preview(bad)})")
    model.load_state_dict(state, strict=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    return model.module if isinstance(model, wrappers) else model
