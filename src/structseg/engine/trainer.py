"""Iteration-based training with evaluation, checkpoints, exact resume and DDP.

:class:`Trainer` cycles the training loader for ``train.iterations`` steps
(epochs only count passes for bookkeeping), evaluates every ``eval_every``
iterations (or every epoch), keeps ``checkpoints/best.pt`` (best validation
mIoU) and ``checkpoints/latest.pt``, and logs to ``log.csv``, TensorBoard and
a tqdm bar. Under ``torchrun`` it trains with DistributedDataParallel; only
rank 0 writes files.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import Dataset

from structseg.engine import distributed as D
from structseg.engine.build import (
    build_optimizer,
    fast_path_for,
    normalization,
    num_classes_for,
    run_datasets,
    training_loss,
)
from structseg.engine.checkpoint import (
    TrainingProgress,
    capture_rng_state,
    load_checkpoint,
    non_finite_tensors,
    resume_training,
    save_atomic,
    seed_everything,
    training_checkpoint,
    unwrap,
)
from structseg.engine.config import Config, save_config
from structseg.engine.datasets import Pair, build_loaders, check_batch_labels, compute_class_weights
from structseg.engine.init_from import InitResult, build_run_model, init_source_for
from structseg.engine.logs import RunLog, describe_environment, write_summary
from structseg.engine.rundir import RunDir, default_run_dir
from structseg.engine.schedules import build_scheduler, follow_time, schedule_position, set_lr
from structseg.errors import ConfigError, StructsegError

if TYPE_CHECKING:
    from structseg.metrics import SegMetrics

Hook = Callable[["Trainer"], None]
HOOK_EVENTS = ("step_end", "eval_end", "checkpoint_saved", "train_end")


class NonFiniteLossError(StructsegError, FloatingPointError):
    """The training loss, the gradient norm or the weights became NaN or infinite."""


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns; ``seconds`` is training time (evaluation excluded)."""

    run_dir: Path
    iterations: int
    best_miou: float
    best_iteration: int
    final_metrics: SegMetrics | None = None  # of the last evaluation
    seconds: float = 0.0


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
        train_set: Dataset[Pair] | None = None,
        val_set: Dataset[Pair] | None = None,
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
        self.last_metrics: SegMetrics | None = None
        self.train_seconds = 0.0
        self._threads_before = 0
        self.stop_requested = False  # set by a hook (or train.max_minutes) to end after this step
        self._last_saved = -1  # the iteration of the last latest.pt written
        self.init_result: InitResult | None = None  # what model.init_from loaded

    # ------------------------------------------------------------ set-up

    def _emit(self, event: str) -> None:
        for fn in self.hooks[event]:
            fn(self)

    def _say(self, line: str) -> None:
        if self.is_main:
            print(f"structseg train: {line}")

    def setup(self) -> None:
        """Build data, model, loss, optimizer and schedule; restore a checkpoint when resuming."""
        cfg = self.cfg
        t = cfg.train
        if t.num_threads:
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(t.num_threads)
        self.dist = D.setup(t.device)
        self.device = self.dist.device
        self.is_main = self.dist.is_main
        if t.deterministic:
            D.deterministic_kernels(self.device)
        seed_everything(t.seed)
        # model.init_from, read before data.mean / data.std resolve (a resumed run ignores it)
        self._init_source = init_source_for(cfg, resuming=t.resume and self.run.latest.is_file(),
                                            latest=self.run.latest, say=self._say)

        world = self.dist.world_size
        if cfg.data.batch_size % world:
            raise ConfigError(f"data.batch_size={cfg.data.batch_size} (global) is not divisible by {world} processes")
        self.local_batch = cfg.data.batch_size // world
        mean, std = normalization(cfg)  # recorded with the run, so eval and predict normalize alike
        cfg.data.mean, cfg.data.std = list(mean), list(std)

        self.train_set, self.val_set, self.classes = run_datasets(cfg, self._train_arg, self._val_arg,
                                                                  progress=self.is_main and t.progress)
        self.num_classes = num_classes_for(cfg, self.classes)
        self.ignore_index = self.classes.ignore_index

        model, self.init_result = build_run_model(cfg, self.num_classes, self.ignore_index, self._init_source,
                                                  self._model_arg, self._say)
        self._init_source = None  # the weights are in the model now; let the source's copy go
        self.own_loss = bool(getattr(model, "trains_own_loss", False))  # model(x, target) is its loss
        model.to(self.device)
        self.fast_path = fast_path_for(cfg, self.device)
        model = self.fast_path.prepare(model) or model
        # an SVM head leaves the base model's own classifier without gradients
        self.model, self.ddp_model = D.wrap_model(self.dist, model, sync_bn=t.sync_bn,
                                                  find_unused_parameters=self.own_loss)
        self.environment = describe_environment(self.device, self.fast_path, cfg.data.batch_size, world,
                                                self.local_batch)
        self._say(", ".join(f"{k.replace('_', ' ')} {v}" for k, v in self.environment.items()))
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, t.iterations)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.fast_path.needs_grad_scaler)
        weights = compute_class_weights(cfg.data.class_weights, self.train_set, self.classes)  # type: ignore[arg-type]
        self.criterion = training_loss(cfg, self.model, self.num_classes, self.ignore_index,
                                       None if weights is None else weights.to(self.device))
        if self.criterion is not None:
            self.criterion.to(self.device)

        loaders = build_loaders(self.train_set, self.val_set, cfg, self.dist, self.local_batch, self.device)
        self.sampler, self.train_loader, self.val_loader, self.steps_per_epoch = loaders
        self.part_names = self.criterion.part_names if self.criterion is not None else []
        self.log = RunLog(self.run, self.part_names, enabled=self.is_main)
        if self.is_main:
            self.run.remove_temporaries()  # left by a run killed while it wrote a checkpoint
        self._maybe_resume()
        if self.is_main:  # only now: a refused resume leaves the run directory as it was
            self.run.make()
            save_config(cfg, self.run.config)

    # ------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        rng = D.all_gather_object(self.dist, capture_rng_state())  # every rank takes part
        progress = TrainingProgress(self.iteration, self.best_miou, self.best_iteration, self.train_seconds)
        return training_checkpoint(unwrap(self.model), self.optimizer, self.scheduler, self.scaler, rng, progress,
                                   self.cfg, self.classes, self.steps_per_epoch, self.dist.world_size)

    def save(self, path: Path, state: dict[str, Any] | None = None) -> None:
        state = state if state is not None else self.state_dict()  # every rank joins the RNG gather
        if self.is_main:
            save_atomic(state, path)
        D.barrier(self.dist)

    def _maybe_resume(self) -> None:
        if not self.cfg.train.resume or not self.run.latest.is_file():
            if self.cfg.train.resume and self.is_main:
                print(f"structseg train: no checkpoint in {self.run.checkpoints}, starting from scratch")
            if self.is_main:
                self.run.clear_outputs()
            D.barrier(self.dist)
            return
        ckpt = load_checkpoint(self.run.latest, map_location="cpu")
        progress, notes = resume_training(ckpt, unwrap(self.model), self.optimizer, self.scheduler, self.scaler,
                                          self.cfg, rank=self.dist.rank, world_size=self.dist.world_size,
                                          source=str(self.run.latest))
        self.iteration, self.best_miou = progress.iteration, progress.best_miou
        self.best_iteration, self.train_seconds = progress.best_iteration, progress.train_seconds
        for line in notes:
            self._say(line)
        if self.is_main:
            self.log.truncate(self.iteration)
            print(f"structseg train: resumed {self.run.root} at iteration {self.iteration}")

    # --------------------------------------------------------------- loop

    def train_step(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[float, dict[str, float]]:
        """One optimisation step; returns the loss (averaged over processes) and its parts."""
        x = self.fast_path.prepare_input(images)
        parts: dict[str, torch.Tensor] = {}
        if self.criterion is None:  # SVM head: its hinge loss (float32 inside) through the DDP wrapper
            with self.fast_path.autocast(self.device):
                loss = self.ddp_model(x, masks).float()
        else:
            with self.fast_path.autocast(self.device):
                if self.criterion.aux_weight:
                    logits, aux_logits = self.ddp_model(x, with_aux=True)
                else:
                    logits, aux_logits = self.ddp_model(x), None
            loss, parts = self.criterion(logits, masks, aux_logits)
        values = torch.stack([loss.detach().float()] + [parts[p].float() for p in self.part_names])
        values = D.mean_across(self.dist, values).cpu()
        if not bool(torch.isfinite(values).all()):
            shown = ", ".join(f"{n}={float(v):.4g}" for n, v in zip(["loss"] + self.part_names, values))
            self._stop_non_finite(f"loss is not finite at iteration {self.iteration + 1} ({shown})")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
            if not self.scaler.is_enabled() and not bool(torch.isfinite(norm)):  # fp16's scaler skips such steps
                self._stop_non_finite(f"gradient norm is {float(norm)} at iteration {self.iteration + 1}, "
                                      "before the optimizer step")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return float(values[0]), {p: float(v) for p, v in zip(self.part_names, values[1:])}

    def evaluate(self, progress: bool = False) -> SegMetrics:
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
        """Stop at ``train.max_minutes`` of training time and follow a time-driven schedule (rank 0's clock
        decides for all)."""
        if self.cfg.train.max_minutes is not None:
            seconds = D.broadcast_object(self.dist, self.train_seconds)
            if follow_time(self.scheduler, self.cfg.schedule, self.cfg.train, self.iteration, seconds):
                self.stop_requested = True

    def _schedule_position(self, seconds: float) -> int:
        return schedule_position(self.cfg.schedule, self.cfg.train, self.iteration, seconds)

    def _row(self, **values: Any) -> dict[str, Any]:
        return {"iteration": self.iteration, "epoch": round(self.iteration / self.steps_per_epoch, 4),
                "seconds": round(self.train_seconds, 3), **values}

    def _log_losses(self, sums: torch.Tensor, count: int) -> None:
        lr = self.optimizer.param_groups[0]["lr"]
        self._bar.set_postfix(loss=f"{sums[0] / count:.4f}", lr=f"{lr:.2e}")
        parts = {f"loss_{p}": float(v / count) for p, v in zip(self.part_names, sums[1:])}
        self.log.write(self._row(loss=float(sums[0] / count), lr=lr, **parts))

    def _evaluate_and_log(self) -> bool:
        """Evaluate, log, and say whether the mIoU is the best so far."""
        metrics = self.evaluate(progress=self.cfg.train.progress)
        self.last_metrics = metrics
        observers = [fn for fn in self.scheduler.lr_lambdas if hasattr(fn, "observe")]
        for fn in observers:  # reduce-on-plateau
            fn.observe(metrics.miou)
        if observers:
            set_lr(self.scheduler, self._schedule_position(self.train_seconds))
        improved = metrics.miou > self.best_miou
        if improved:
            self.best_miou, self.best_iteration = metrics.miou, self.iteration
        self.log.write(self._row(val_miou=metrics.miou, val_pixel_acc=metrics.pixel_acc,
                                  val_mean_acc=metrics.mean_acc, val_fwiou=metrics.fwiou))
        if self.is_main and self.cfg.train.progress:
            self._bar.write(f"iteration {self.iteration}: val mIoU {100 * metrics.miou:.2f} "
                            f"(best {100 * self.best_miou:.2f} @ {self.best_iteration})")
        self._emit("eval_end")
        return improved

    def _stop_non_finite(self, what: str) -> None:
        last = f"{self.run.latest} (iteration {self._last_saved})" if self._last_saved >= 0 else "none was written yet"
        raise NonFiniteLossError(f"{what}; training stopped. Last good checkpoint: {last}. Lower optim.lr, set "
                                 "optim.grad_clip, or check the data.")

    def _checkpoint(self, improved: bool) -> None:
        every = self.cfg.train.checkpoint_every
        latest = (every > 0 and self.iteration % every == 0) or self._at_end()
        if not (improved or latest):
            return
        bad = non_finite_tensors(unwrap(self.model).state_dict())
        if bad:  # never written to latest.pt or best.pt
            self._stop_non_finite(f"weights are not finite after iteration {self.iteration} "
                                  f"({', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''})")
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
        self.log.open(self.iteration)
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
                    check_batch_labels(masks, indices, self.num_classes, self.ignore_index,
                                       self.train_set.describe)  # type: ignore[attr-defined]
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
            self.log.close()
        result = TrainResult(self.run.root, self.iteration, self.best_miou, self.best_iteration,
                             self.last_metrics, self.train_seconds)
        if self.is_main:
            write_summary(self.run, result, self.classes, self.steps_per_epoch, self.cfg.data.val_split,
                          self.environment)
        self._emit("train_end")
        D.barrier(self.dist)
        D.teardown(self.dist)
        return result


def train(cfg: Config, run_dir: str | Path | None = None, **kwargs: Any) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (see :class:`Trainer` for the keyword arguments)."""
    return Trainer(cfg, run_dir, **kwargs).fit()
