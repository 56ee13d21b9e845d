"""Learning-rate schedules as :class:`torch.optim.lr_scheduler.LambdaLR` factors.

Each factor is a small callable object (not a lambda) so that ``LambdaLR``'s
``state_dict`` stores its parameters and a resumed run continues the same curve.
The factor multiplies every parameter group's base learning rate, which keeps
the backbone/head ratio fixed. ``warmup_iters`` > 0 adds a linear warm-up
(from ``1 / warmup_iters`` to 1) in front of any schedule; it is cut to
``total_iters - 1`` when the run is shorter.
"""
from __future__ import annotations

import math

import torch

from structseg.engine.config import ScheduleConfig, TrainConfig
from structseg.errors import ConfigError


class ScheduleFactor:
    """``factor(iteration) -> float``; subclasses define :meth:`decay`. ``runtime`` names the attributes that
    are state rather than settings (kept when a resumed run re-reads its settings from the config)."""

    runtime: tuple[str, ...] = ()

    def __init__(self, total_iters: int, warmup_iters: int = 0) -> None:
        self.total_iters = int(total_iters)
        self.warmup_iters = int(warmup_iters)

    def decay(self, iteration: int) -> float:
        return 1.0

    def __call__(self, iteration: int) -> float:
        if iteration < self.warmup_iters:
            return (iteration + 1) / self.warmup_iters
        return self.decay(iteration)


class StepFactor(ScheduleFactor):
    """Multiply by ``gamma`` every ``step_size`` iterations."""

    def __init__(self, total_iters: int, step_size: int, gamma: float, warmup_iters: int = 0) -> None:
        super().__init__(total_iters, warmup_iters)
        self.step_size = int(step_size)
        self.gamma = float(gamma)

    def decay(self, iteration: int) -> float:
        return self.gamma ** (iteration // self.step_size)


class MultiStepFactor(ScheduleFactor):
    """Multiply by ``gamma`` at each of the ``milestones`` (iterations)."""

    def __init__(self, total_iters: int, milestones: list[int], gamma: float, warmup_iters: int = 0) -> None:
        super().__init__(total_iters, warmup_iters)
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)

    def decay(self, iteration: int) -> float:
        return self.gamma ** sum(iteration >= m for m in self.milestones)


class PlateauFactor(ScheduleFactor):
    """Reduce on plateau: multiply by ``gamma`` when the validation mIoU has not improved (by more than
    ``threshold``) for ``patience`` evaluations in a row. The trainer reports each evaluation to
    :meth:`observe`; the state lives in the factor, so the scheduler's state dict carries it through a resume."""

    runtime = ("scale", "best", "bad_evals")

    def __init__(self, total_iters: int, gamma: float, patience: int, warmup_iters: int = 0,
                 threshold: float = 1e-4) -> None:
        super().__init__(total_iters, warmup_iters)
        self.gamma, self.patience, self.threshold = float(gamma), int(patience), float(threshold)
        self.scale, self.best, self.bad_evals = 1.0, -math.inf, 0

    def observe(self, metric: float) -> None:
        if metric > self.best + self.threshold:
            self.best, self.bad_evals = metric, 0
            return
        self.bad_evals += 1
        if self.bad_evals >= self.patience:
            self.scale *= self.gamma
            self.bad_evals = 0

    def decay(self, iteration: int) -> float:
        return self.scale


class PolyFactor(ScheduleFactor):
    """``(1 - t / T) ** power`` over the iterations after warm-up."""

    def __init__(self, total_iters: int, power: float, warmup_iters: int = 0) -> None:
        super().__init__(total_iters, warmup_iters)
        self.power = float(power)

    def decay(self, iteration: int) -> float:
        span = max(1, self.total_iters - self.warmup_iters)
        t = min(iteration - self.warmup_iters, span)
        return float((1.0 - t / span) ** self.power)


class CosineFactor(ScheduleFactor):
    """Half a cosine from 1 down to ``min_ratio`` over the iterations after warm-up."""

    def __init__(self, total_iters: int, warmup_iters: int = 0, min_ratio: float = 0.0) -> None:
        super().__init__(total_iters, warmup_iters)
        self.min_ratio = float(min_ratio)

    def decay(self, iteration: int) -> float:
        span = max(1, self.total_iters - self.warmup_iters)
        t = min(iteration - self.warmup_iters, span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t / span))


def schedule_factor(cfg: ScheduleConfig, total_iters: int) -> ScheduleFactor:
    """The factor object a :class:`ScheduleConfig` describes."""
    if cfg.warmup_iters < 0:
        raise ConfigError(f"schedule.warmup_iters must be >= 0, got {cfg.warmup_iters}")
    warmup = min(cfg.warmup_iters, max(0, total_iters - 1))  # a shortened run shortens its warm-up
    if cfg.name == "constant":
        return ScheduleFactor(total_iters, warmup)
    if cfg.name == "step":
        if cfg.step_size <= 0:
            raise ConfigError(f"schedule.step_size must be positive, got {cfg.step_size}")
        return StepFactor(total_iters, cfg.step_size, cfg.gamma, warmup)
    if cfg.name == "multistep":
        return MultiStepFactor(total_iters, cfg.milestones, cfg.gamma, warmup)
    if cfg.name == "plateau":
        return PlateauFactor(total_iters, cfg.gamma, cfg.patience, warmup)
    if cfg.name == "poly":
        return PolyFactor(total_iters, cfg.power, warmup)
    if cfg.name == "warmup_cosine":
        return CosineFactor(total_iters, warmup, cfg.min_lr_ratio)
    raise ConfigError(f"schedule.name: unknown schedule {cfg.name!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_iters: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepping once per iteration."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_factor(cfg, total_iters))


def follow_config(scheduler: torch.optim.lr_scheduler.LambdaLR, cfg: ScheduleConfig, total_iters: int) -> None:
    """After a resume the schedule follows the config (e.g. more ``train.iterations``), not the one stored;
    what a factor learnt while running (a plateau's scale) stays."""
    current = schedule_factor(cfg, total_iters).__dict__
    for fn in scheduler.lr_lambdas:
        fn.__dict__.update({k: v for k, v in current.items() if k not in getattr(fn, "runtime", ())})


def schedule_position(schedule: ScheduleConfig, train: TrainConfig, iteration: int, seconds: float) -> int:
    """The iteration the schedule is at: ``iteration``, or with ``schedule.by_time`` (and ``train.max_minutes``)
    the larger of it and the share of the time budget spent, in iterations, so the decay ends at the budget
    however fast the machine is."""
    if not (schedule.by_time and train.max_minutes):
        return iteration
    return max(iteration, min(train.iterations, int(train.iterations * seconds / (60.0 * train.max_minutes))))


def set_lr(scheduler: torch.optim.lr_scheduler.LambdaLR, position: int) -> None:
    """Put every parameter group's learning rate where the schedule is at ``position`` (a time-driven schedule
    or a resume moves it without stepping)."""
    for group, base_lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base_lr * scheduler.lr_lambdas[0](position)


def follow_time(scheduler: torch.optim.lr_scheduler.LambdaLR, schedule: ScheduleConfig, train: TrainConfig,
                iteration: int, seconds: float) -> bool:
    """After ``seconds`` of training: move a time-driven schedule to its position and say whether the
    ``train.max_minutes`` budget is spent."""
    if schedule.by_time:
        set_lr(scheduler, schedule_position(schedule, train, iteration, seconds))
    return train.max_minutes is not None and seconds >= 60.0 * train.max_minutes
