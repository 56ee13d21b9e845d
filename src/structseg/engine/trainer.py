"""Iteration-based training with evaluation, checkpoints, exact resume and DDP.

:class:`Trainer` cycles the training loader for ``train.iterations`` steps
(epochs only count passes for bookkeeping), evaluates every ``eval_every``
iterations (or every epoch), keeps ``checkpoints/best.pt`` (best validation
mIoU) and ``checkpoints/latest.pt``, and logs to ``log.csv``, TensorBoard and
a tqdm bar. Under ``torchrun`` it trains with DistributedDataParallel; only
rank 0 writes files.
"""
from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from structseg.data.base import ClassInfo
from structseg.engine import distributed as D
from structseg.engine.build import (
    build_criterion,
    build_eval_dataset,
    build_model_from_config,
    build_optimizer,
    build_train_dataset,
    check_classes,
    fast_path_for,
    normalization,
    num_classes_for,
)
from structseg.engine.checkpoint import (
    FORMAT_VERSION,
    capture_rng_state,
    load_checkpoint,
    load_model_state,
    restore_rng_state,
    save_atomic,
    unwrap,
)
from structseg.engine.config import Config, config_from_dict, config_to_dict, save_config
from structseg.engine.datasets import SeededDataset, ShardedSampler, compute_class_weights
from structseg.engine.rundir import RunDir, default_run_dir
from structseg.engine.schedules import build_scheduler, schedule_factor
from structseg.errors import CheckpointError, ConfigError, DataError, StructsegError

Hook = Callable[["Trainer"], None]
HOOK_EVENTS = ("step_end", "eval_end", "checkpoint_saved", "train_end")


class NonFiniteLossError(StructsegError, FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns; ``seconds`` is training time (evaluation excluded)."""

    run_dir: Path
    iterations: int
    best_miou: float
    best_iteration: int
    final_metrics: Any = None  # SegMetrics of the last evaluation
    seconds: float = 0.0


def classes_to_dict(classes: ClassInfo) -> dict[str, Any]:
    return {"names": list(classes.names), "palette": [list(c) for c in classes.palette],
            "ignore_index": int(classes.ignore_index), "ignore_color": list(classes.ignore_color)}


def classes_from_dict(d: dict[str, Any]) -> ClassInfo:
    return ClassInfo(names=tuple(d["names"]), palette=tuple(tuple(int(v) for v in c) for c in d["palette"]),
                     ignore_index=int(d["ignore_index"]), ignore_color=tuple(d.get("ignore_color", (0, 0, 0))))


class Trainer:
    """Train the model a :class:`Config` describes.

    ``model``, ``train_set`` and ``val_set`` may be given to bypass the
    builders (tests, notebooks); they must follow the data and model contracts.
    ``hooks`` maps an event (``step_end``, ``eval_end``, ``checkpoint_saved``,
    ``train_end``) to callables receiving the trainer; a ``step_end`` hook may set
    ``trainer.stop_requested = True`` to end the run after that step (with a final
    evaluation and checkpoint).
    """

    def __init__(
        self,
        cfg: Config,
        run_dir: str | Path | None = None,
        *,
        model: nn.Module | None = None,
        train_set: Dataset | None = None,
        val_set: Dataset | None = None,
        hooks: dict[str, list[Hook]] | None = None,
    ) -> None:
        self.cfg = cfg
        root = run_dir or cfg.run_dir or default_run_dir(None)
        self.cfg.run_dir = str(root)
        self.run = RunDir(root)
        self._model_arg = model
        self._train_arg = train_set
        self._val_arg = val_set
        self.hooks: dict[str, list[Hook]] = {e: [] for e in HOOK_EVENTS}
        for event, fns in (hooks or {}).items():
            if event not in self.hooks:
                raise ValueError(f"unknown hook event {event!r} (known: {', '.join(HOOK_EVENTS)})")
            self.hooks[event].extend(fns)
        self.iteration = 0
        self.best_miou = -math.inf
        self.best_iteration = -1
        self.last_metrics: Any = None
        self.train_seconds = 0.0
        self._threads_before = 0
        self.stop_requested = False  # set by a hook (or train.max_minutes) to end after this step
        self.init_result: Any = None  # what model.init_from loaded (structseg.engine.init_from.InitResult)

    # ------------------------------------------------------------ set-up

    def _emit(self, event: str) -> None:
        for fn in self.hooks[event]:
            fn(self)

    def _seed(self, seed: int) -> None:
        import random

        import numpy as np

        random.seed(seed)
        np.random.seed(seed % (2**32))
        torch.manual_seed(seed)

    def _deterministic(self) -> None:
        """Deterministic kernels on CUDA (CPU kernels already are, for a fixed thread count)."""
        if self.cfg.train.deterministic and self.device.type == "cuda":
            import os

            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
            torch.use_deterministic_algorithms(True, warn_only=True)

    def setup(self) -> None:
        """Build data, model, loss, optimizer and schedule; restore a checkpoint when resuming."""
        cfg = self.cfg
        t = cfg.train
        if t.iterations <= 0:
            raise ConfigError(f"train.iterations must be positive, got {t.iterations}")
        if cfg.schedule.by_time and not t.max_minutes:
            raise ConfigError("schedule.by_time=true needs train.max_minutes (the budget the schedule spans)")
        if t.num_threads:
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(t.num_threads)
        self.dist = D.setup(t.device)
        self.device = self.dist.device
        self.is_main = self.dist.is_main
        self._deterministic()
        self._seed(t.seed)
        self._init_source = self._read_init_source()  # model.init_from, before data.mean / data.std resolve

        world = self.dist.world_size
        if cfg.data.batch_size % world:
            raise ConfigError(f"data.batch_size={cfg.data.batch_size} (global) is not divisible by {world} processes")
        self.local_batch = cfg.data.batch_size // world
        mean, std = normalization(cfg)  # recorded with the run, so eval and predict normalise alike
        cfg.data.mean, cfg.data.std = list(mean), list(std)

        self.train_set = self._train_arg if self._train_arg is not None else build_train_dataset(
            cfg, progress=self.is_main and t.progress)
        self.val_set = self._val_arg if self._val_arg is not None else build_eval_dataset(cfg)
        if len(self.train_set) == 0:  # type: ignore[arg-type]
            raise DataError("the training split is empty")
        if len(self.val_set) == 0:  # type: ignore[arg-type]
            raise DataError("the validation split is empty")
        self.classes: ClassInfo = self.train_set.classes  # type: ignore[attr-defined]
        check_classes(self.classes, self.val_set.classes, f"validation split '{cfg.data.val_split}'")  # type: ignore[attr-defined]
        self.num_classes = num_classes_for(cfg, self.classes)
        self.ignore_index = self.classes.ignore_index

        build_cfg = cfg
        if self._init_source is not None and cfg.model.weights is not None:  # init_from replaces them all
            import dataclasses

            build_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, weights=None))
            if self.is_main:
                print(f"structseg train: model.weights={cfg.model.weights} not loaded: model.init_from replaces "
                      "every backbone weight")
        model = (_as_map_model(self._model_arg) if self._model_arg is not None
                 else build_model_from_config(build_cfg, self.num_classes, self.ignore_index))
        self.structured = bool(getattr(model, "map_inference", False))  # model.head: svm | ssvm
        if self.structured:
            self._check_structured()
        if self._init_source is not None:
            self._init_model(model)
        model.to(self.device)
        self.fast_path = fast_path_for(cfg, self.device)
        model = self.fast_path.prepare(model) or model
        if t.sync_bn and world > 1:
            if self.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            elif self.is_main:
                print("structseg train: train.sync_bn ignored on the CPU (SyncBatchNorm needs GPUs)")
        self.model = model
        self.optimizer = build_optimizer(cfg, model)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, t.iterations)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.fast_path.autocast_dtype == torch.float16)
        self.criterion: nn.Module | None = None  # an SVM head trains with its own loss (model(x, target))
        if not self.structured:
            weights = compute_class_weights(cfg.data.class_weights, self.train_set, self.classes)  # type: ignore[arg-type]
            self.criterion = build_criterion(cfg, self.num_classes, self.ignore_index, weights).to(self.device)

        if world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # an SVM head leaves the base model's own classifier without gradients
            self.ddp_model: nn.Module = nn.parallel.DistributedDataParallel(
                model, device_ids=ids, find_unused_parameters=self.structured)
        else:
            self.ddp_model = model

        n = len(self.train_set)  # type: ignore[arg-type]
        self.sampler = ShardedSampler(n, rank=self.dist.rank, world_size=world, shuffle=True, seed=t.seed)
        self.steps_per_epoch = self.sampler.per_rank() // self.local_batch
        if self.steps_per_epoch == 0:
            raise DataError(
                f"the training split has {n} images, fewer than the batch size "
                f"({self.local_batch} per process): lower data.batch_size"
            )
        loader_gen = torch.Generator().manual_seed(t.seed)
        w = cfg.data.workers
        self.train_loader = DataLoader(
            SeededDataset(self.train_set), batch_size=self.local_batch, sampler=self.sampler, drop_last=True,
            num_workers=w, persistent_workers=w > 0, pin_memory=self.device.type == "cuda", generator=loader_gen,
        )
        self.val_sampler = ShardedSampler(len(self.val_set), rank=self.dist.rank, world_size=world,  # type: ignore[arg-type]
                                          shuffle=False, pad=False, with_seeds=False)
        self.val_loader = DataLoader(
            self.val_set, batch_size=cfg.data.eval_batch_size, sampler=self.val_sampler, num_workers=w,
            persistent_workers=w > 0, pin_memory=self.device.type == "cuda", generator=torch.Generator(),
        )
        self.part_names = self.criterion.part_names if self.criterion is not None else []
        if self.is_main:
            self.run.make()
            save_config(cfg, self.run.config)
        self._maybe_resume()

    def _check_structured(self) -> None:
        """An SVM head: evaluation must suit MAP labels; say which config sections do not apply."""
        from structseg.engine.heads import check_map_eval, describe_head

        cfg = self.cfg
        check_map_eval(cfg.eval, cfg.model.head)
        if self.is_main:
            unused = f"the loss section ({', '.join(t.name for t in cfg.loss) or 'empty'})"
            if cfg.data.class_weights != "none":
                unused += f" and data.class_weights={cfg.data.class_weights}"
            print(f"structseg train: {describe_head(cfg.model)} trains with its own hinge loss; "
                  f"{unused} do not apply")

    def _read_init_source(self):
        """The weights ``model.init_from`` names (None when unset, or ignored because the run resumes from
        its own checkpoint); takes the source's input normalisation unless ``data.mean``/``data.std`` are set."""
        value = self.cfg.model.init_from
        if value is None:
            return None
        if self.cfg.train.resume and self.run.latest.is_file():
            if self.is_main:
                print(f"structseg train: model.init_from={value} ignored: resuming from {self.run.latest}, "
                      "which restores the model, optimizer and schedule")
            return None
        from structseg.engine.init_from import inherit_normalization, read_init_source

        source = read_init_source(value)
        note = inherit_normalization(self.cfg, source)
        if note and self.is_main:
            print(f"structseg train: {note}")
        return source

    def _init_model(self, model: nn.Module) -> None:
        """Load the ``model.init_from`` weights into the freshly built model (classifier of another class
        count left as built); the optimizer and schedule are built on it afterwards, from scratch."""
        from structseg.engine.init_from import init_model_from

        result = init_model_from(model, self._init_source, self.num_classes)
        result.source.state = {}  # the weights are in the model now; let the source's copy go
        self._init_source = None
        self.init_result = result
        if self.is_main:
            for line in result.messages:
                print(f"structseg train: {line}")

    # ------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        rng = D.all_gather_object(self.dist, capture_rng_state())
        return {
            "format": FORMAT_VERSION,
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng": rng,
            "iteration": self.iteration,
            "epoch": self.iteration / self.steps_per_epoch,
            "best_miou": self.best_miou if math.isfinite(self.best_miou) else -1.0,
            "best_iteration": self.best_iteration,
            "train_seconds": self.train_seconds,
            "config": config_to_dict(self.cfg),
            "classes": classes_to_dict(self.classes),
            "world_size": self.dist.world_size,
        }

    def save(self, path: Path, state: dict[str, Any] | None = None) -> None:
        state = state if state is not None else self.state_dict()  # every rank joins the RNG gather
        if self.is_main:
            save_atomic(state, path)
        D.barrier(self.dist)

    def _start_fresh(self) -> None:
        """Remove what an earlier run left in the directory (logs, events, checkpoints)."""
        import shutil

        if not self.is_main:
            return
        for path in (self.run.log, self.run.metrics, self.run.latest, self.run.best):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.run.tb, ignore_errors=True)

    def _maybe_resume(self) -> None:
        if not self.cfg.train.resume or not self.run.latest.is_file():
            if self.cfg.train.resume and self.is_main:
                print(f"structseg train: no checkpoint in {self.run.checkpoints}, starting from scratch")
            self._start_fresh()
            D.barrier(self.dist)
            return
        ckpt = load_checkpoint(self.run.latest, map_location="cpu")
        load_model_state(unwrap(self.model), ckpt["model"], source=f"checkpoint {self.run.latest}")
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"checkpoint {self.run.latest}: optimizer state does not fit: {exc}") from None
        # the schedule follows the config (e.g. more train.iterations), not the one stored
        current = schedule_factor(self.cfg.schedule, self.cfg.train.iterations).__dict__
        for fn in self.scheduler.lr_lambdas:
            fn.__dict__.update(current)
        if ckpt.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        self.iteration = int(ckpt["iteration"])
        self.best_miou = float(ckpt.get("best_miou", -1.0))
        self.best_iteration = int(ckpt.get("best_iteration", -1))
        self.train_seconds = float(ckpt.get("train_seconds", 0.0))
        self._set_lr(self._schedule_position(self.train_seconds))
        if self.iteration > self.cfg.train.iterations:
            raise ConfigError(
                f"checkpoint is at iteration {self.iteration}, beyond train.iterations={self.cfg.train.iterations}"
            )
        rng = ckpt.get("rng") or []
        if len(rng) == self.dist.world_size:
            restore_rng_state(rng[self.dist.rank])
        elif self.is_main:
            print(f"structseg train: checkpoint from {len(rng)} processes, now {self.dist.world_size}: "
                  "random streams are reseeded (resume is not bit-exact)")
        if self.is_main:
            self._truncate_log(self.iteration)
            print(f"structseg train: resumed {self.run.root} at iteration {self.iteration}")

    # --------------------------------------------------------------- logs

    def _log_header(self) -> list[str]:
        return (["iteration", "epoch", "loss"] + [f"loss_{p}" for p in self.part_names]
                + ["lr", "seconds", "val_miou", "val_pixel_acc", "val_mean_acc", "val_fwiou"])

    def _truncate_log(self, iteration: int) -> None:
        """Drop rows written after the checkpoint a resumed run starts from."""
        if not self.run.log.is_file():
            return
        with open(self.run.log, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        kept = [r for r in rows if r.get("iteration") and float(r["iteration"]) <= iteration]
        with open(self.run.log, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=self._log_header(), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)

    def _open_logs(self) -> None:
        self._csv_file = None
        self._tb = None
        if not self.is_main:
            return
        new = not self.run.log.is_file() or self.run.log.stat().st_size == 0
        self._csv_file = open(self.run.log, "a", newline="", encoding="utf-8")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=self._log_header(), extrasaction="ignore")
        if new:
            self._csv.writeheader()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run.tb), purge_step=self.iteration + 1 if self.iteration else None)
        except ImportError:  # tensorboard is optional at run time
            self._tb = None

    def _close_logs(self) -> None:
        if self._csv_file is not None:
            self._csv_file.close()
            self._csv_file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def _write_row(self, row: dict[str, Any]) -> None:
        if self._csv_file is None:
            return
        self._csv.writerow(row)
        self._csv_file.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key not in ("iteration", "epoch") and isinstance(value, float) and math.isfinite(value):
                    self._tb.add_scalar(key.replace("_", "/", 1) if key.startswith(("loss_", "val_")) else key,
                                        value, row["iteration"])

    # --------------------------------------------------------------- loop

    def _check_labels(self, masks: torch.Tensor, indices: torch.Tensor) -> None:
        valid = masks[masks != self.ignore_index]
        if valid.numel() == 0:
            return
        lo, hi = int(valid.min()), int(valid.max())
        if lo < 0 or hi >= self.num_classes:
            bad = [int(i) for i, m in zip(indices, masks)
                   if bool(((m != self.ignore_index) & ((m < 0) | (m >= self.num_classes))).any())]
            names = ", ".join(self.train_set.describe(i) for i in bad[:3])  # type: ignore[attr-defined]
            raise DataError(
                f"mask labels {lo}..{hi} do not fit the {self.num_classes} classes of the data set "
                f"(ignore value {self.ignore_index}) in {names}"
            )

    def train_step(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[float, dict[str, float]]:
        """One optimisation step; returns the loss (averaged over processes) and its parts."""
        x = self.fast_path.prepare_input(images)
        parts: dict[str, torch.Tensor] = {}
        if self.criterion is None:  # SVM head: its hinge loss (float32 inside) through the DDP wrapper
            with self.fast_path.autocast(self.device):
                loss = self.ddp_model(x, masks).float()
        else:
            with self.fast_path.autocast(self.device):
                output = self.ddp_model(x)
            loss, parts = self.criterion(output, masks)
        values = torch.stack([loss.detach().float()] + [parts[p].float() for p in self.part_names])
        values = D.mean_across(self.dist, values).cpu()
        if not bool(torch.isfinite(values).all()):
            shown = ", ".join(f"{n}={float(v):.4g}" for n, v in zip(["loss"] + self.part_names, values))
            last = (f"{self.run.latest} (iteration {self._last_saved})" if self._last_saved >= 0
                    else "none was written yet")
            raise NonFiniteLossError(
                f"loss is not finite at iteration {self.iteration + 1} ({shown}); training stopped. "
                f"Last good checkpoint: {last}. Lower optim.lr, set optim.grad_clip, or check the data."
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return float(values[0]), {p: float(v) for p, v in zip(self.part_names, values[1:])}

    def evaluate(self, progress: bool = False):
        """Validation metrics of the current weights (all processes take part)."""
        from structseg.engine.evaluate import evaluate_model

        return evaluate_model(unwrap(self.model), self.val_loader, self.num_classes, ignore_index=self.ignore_index,
                              cfg=self.cfg.eval, device=self.device, fast_path=self.fast_path,
                              progress=progress and self.is_main, desc=f"eval @{self.iteration}")

    def _at_end(self) -> bool:
        return self.iteration >= self.cfg.train.iterations or self.stop_requested

    def _eval_due(self) -> bool:
        every = self.cfg.train.eval_every
        if self._at_end():
            return True
        if every == "epoch":
            return self.iteration % self.steps_per_epoch == 0
        return every > 0 and self.iteration % every == 0

    def _check_time(self) -> None:
        """Stop at ``train.max_minutes`` of training time and follow a time-driven schedule
        (rank 0's clock decides for all)."""
        limit = self.cfg.train.max_minutes
        if limit is None:
            return
        seconds = D.broadcast_object(self.dist, self.train_seconds)
        if seconds >= 60.0 * limit:
            self.stop_requested = True
        if self.cfg.schedule.by_time:
            self._set_lr(self._schedule_position(seconds))

    def _schedule_position(self, seconds: float) -> int:
        """The iteration the schedule is at: with ``schedule.by_time``, the larger of the step count and
        the share of ``train.max_minutes`` spent, in iterations."""
        t = self.cfg.train
        if not (self.cfg.schedule.by_time and t.max_minutes):
            return self.iteration
        return max(self.iteration, min(t.iterations, int(t.iterations * seconds / (60.0 * t.max_minutes))))

    def _set_lr(self, position: int) -> None:
        for group, base_lr in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base_lr * self.scheduler.lr_lambdas[0](position)

    def _row(self, **values: Any) -> dict[str, Any]:
        return {"iteration": self.iteration, "epoch": round(self.iteration / self.steps_per_epoch, 4),
                "seconds": round(self.train_seconds, 3), **values}

    def _log_losses(self, sums: torch.Tensor, count: int) -> None:
        lr = self.optimizer.param_groups[0]["lr"]
        self._bar.set_postfix(loss=f"{sums[0] / count:.4f}", lr=f"{lr:.2e}")
        parts = {f"loss_{p}": float(v / count) for p, v in zip(self.part_names, sums[1:])}
        self._write_row(self._row(loss=float(sums[0] / count), lr=lr, **parts))

    def _evaluate_and_log(self) -> bool:
        """Evaluate, log, and say whether the mIoU is the best so far."""
        metrics = self.evaluate(progress=self.cfg.train.progress)
        self.last_metrics = metrics
        improved = metrics.miou > self.best_miou
        if improved:
            self.best_miou, self.best_iteration = metrics.miou, self.iteration
        self._write_row(self._row(val_miou=metrics.miou, val_pixel_acc=metrics.pixel_acc,
                                  val_mean_acc=metrics.mean_acc, val_fwiou=metrics.fwiou))
        if self.is_main and self.cfg.train.progress:
            self._bar.write(f"iteration {self.iteration}: val mIoU {100 * metrics.miou:.2f} "
                            f"(best {100 * self.best_miou:.2f} @ {self.best_iteration})")
        self._emit("eval_end")
        return improved

    def _checkpoint(self, improved: bool) -> None:
        every = self.cfg.train.checkpoint_every
        latest = (every > 0 and self.iteration % every == 0) or self._at_end()
        if not (improved or latest):
            return
        state = self.state_dict()
        if improved:
            self.save(self.run.best, state)
        if latest:
            self.save(self.run.latest, state)
            self._last_saved = self.iteration
        self._emit("checkpoint_saved")

    def fit(self) -> TrainResult:
        """Run (or continue) training to ``train.iterations`` (see :meth:`_fit`)."""
        try:
            return self._fit()
        finally:
            if self._threads_before:
                torch.set_num_threads(self._threads_before)

    def _fit(self) -> TrainResult:
        """Run (or continue) training to ``train.iterations``; returns the best mIoU and final metrics.

        ``seconds`` in the log and ``train_seconds`` count training steps only (data loading
        included, evaluation and checkpointing excluded), summed over resumed sessions.
        """
        from tqdm.auto import tqdm

        self.setup()
        t = self.cfg.train
        self._last_saved = self.iteration if t.resume and self.iteration else -1
        self._open_logs()
        self._bar = tqdm(total=t.iterations, initial=self.iteration, desc="train", dynamic_ncols=True,
                         disable=not (self.is_main and t.progress))
        sums = torch.zeros(1 + len(self.part_names), dtype=torch.float64)
        count = 0
        try:
            while not self._at_end():
                epoch, offset = divmod(self.iteration, self.steps_per_epoch)
                self.sampler.set_epoch(epoch, start=offset * self.local_batch)
                tick = time.perf_counter()
                for images, masks, indices in self.train_loader:
                    self._check_labels(masks, indices)
                    self.model.train()
                    loss, parts = self.train_step(images.to(self.device, non_blocking=True),
                                                  masks.to(self.device, non_blocking=True))
                    self.iteration += 1
                    self.train_seconds += time.perf_counter() - tick
                    self._check_time()
                    sums += torch.tensor([loss] + [parts[p] for p in self.part_names], dtype=torch.float64)
                    count += 1
                    self._bar.update(1)
                    if self.iteration % t.log_every == 0 or self._at_end():
                        self._log_losses(sums, count)
                        sums.zero_()
                        count = 0
                    self._emit("step_end")
                    improved = self._evaluate_and_log() if self._eval_due() else False
                    self._checkpoint(improved)
                    if self._at_end():
                        break
                    tick = time.perf_counter()
        finally:
            self._bar.close()
            self._close_logs()
        result = TrainResult(self.run.root, self.iteration, self.best_miou, self.best_iteration,
                             self.last_metrics, self.train_seconds)
        if self.is_main:
            self._finish(result)
        self._emit("train_end")
        D.barrier(self.dist)
        D.teardown(self.dist)
        return result

    def _finish(self, result: TrainResult) -> None:
        """Figures, ``metrics.json`` and the per-class table."""
        from structseg.viz.curves import plot_loss_curve, plot_miou_curve, read_log

        rows = read_log(self.run.log)
        plot_loss_curve(rows, self.run.figures / "loss_curve.png")
        plot_miou_curve(rows, self.run.figures / "miou_curve.png")
        names = list(self.classes.names)
        summary: dict[str, Any] = {
            "iterations": result.iterations,
            "epochs": round(result.iterations / self.steps_per_epoch, 3),
            "best_miou": result.best_miou,
            "best_iteration": result.best_iteration,
            "train_seconds": round(result.seconds, 2),
            "split": self.cfg.data.val_split,
        }
        if result.final_metrics is not None:
            summary["final"] = result.final_metrics.as_dict(names)
            from structseg.metrics.plots import plot_confusion

            plot_confusion(result.final_metrics.confusion, names, self.run.figures / "confusion.png")
            print(result.final_metrics.table(names))
        self.run.metrics.write_text(json.dumps(summary, indent=2), encoding="utf-8")
        print(f"structseg train: best val mIoU {100 * result.best_miou:.2f} at iteration {result.best_iteration}; "
              f"run directory {self.run.root}")


def _as_map_model(model: nn.Module) -> nn.Module:
    """A plain StructuredSegmenter given to the trainer becomes an EngineSegmenter (same parameters)."""
    structured = sys.modules.get("structseg.structured.models")  # loaded whenever such a model exists
    if structured is not None and isinstance(model, structured.StructuredSegmenter):
        from structseg.engine.heads import as_engine_segmenter

        return as_engine_segmenter(model)
    return model


def train(cfg: Config, run_dir: str | Path | None = None, **kwargs: Any) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (see :class:`Trainer` for the keyword arguments)."""
    return Trainer(cfg, run_dir, **kwargs).fit()


def config_of_checkpoint(ckpt: dict[str, Any]) -> Config:
    """The config stored in a checkpoint."""
    if "config" not in ckpt:
        raise CheckpointError("checkpoint carries no config; pass one with -c")
    return config_from_dict(ckpt["config"])
