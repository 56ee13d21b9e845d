"""Schedules against torch's own schedulers (independent implementations of the same formulas)."""
from __future__ import annotations

import math

import pytest
import torch

from structseg.engine.config import ScheduleConfig
from structseg.engine.schedules import build_scheduler
from structseg.errors import ConfigError


def lrs(make_sched, steps: int, base_lr: float = 0.1) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=base_lr)
    sched = make_sched(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_step_matches_steplr():
    cfg = ScheduleConfig(name="step", step_size=7, gamma=0.3)
    ours = lrs(lambda o: build_scheduler(o, cfg, 40), 40)
    ref = lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.3), 40)
    assert ours == pytest.approx(ref, rel=1e-12)
    assert ours[6] == pytest.approx(0.1) and ours[7] == pytest.approx(0.03)


def test_poly_matches_polynomiallr():
    cfg = ScheduleConfig(name="poly", power=0.9)
    ours = lrs(lambda o: build_scheduler(o, cfg, 30), 30)
    ref = lrs(lambda o: torch.optim.lr_scheduler.PolynomialLR(o, total_iters=30, power=0.9), 30)
    assert ours == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_warmup_cosine_matches_linear_then_cosine():
    total, warm, base, floor = 50, 5, 0.1, 0.1
    cfg = ScheduleConfig(name="warmup_cosine", warmup_iters=warm, min_lr_ratio=floor)
    ours = lrs(lambda o: build_scheduler(o, cfg, total), total, base)

    def reference(o):
        lin = torch.optim.lr_scheduler.LinearLR(o, start_factor=1 / warm, end_factor=1.0, total_iters=warm - 1)
        cos = torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total - warm, eta_min=base * floor)
        return torch.optim.lr_scheduler.SequentialLR(o, [lin, cos], milestones=[warm])

    ref = lrs(reference, total, base)
    assert ours == pytest.approx(ref, rel=1e-9, abs=1e-12)
    t = 20 - warm
    assert ours[20] == pytest.approx(base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t / (total - warm)))))


def test_backbone_ratio_is_kept_and_state_restores():
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p1], "lr": 0.1}, {"params": [p2], "lr": 0.01}])
    cfg = ScheduleConfig(name="poly", power=1.0, warmup_iters=3)
    sched = build_scheduler(opt, cfg, 20)
    for _ in range(8):
        opt.step()
        sched.step()
    g = opt.param_groups
    assert g[1]["lr"] == pytest.approx(0.1 * g[0]["lr"])
    state = sched.state_dict()
    opt2 = torch.optim.SGD([{"params": [p1], "lr": 0.1}, {"params": [p2], "lr": 0.01}])
    sched2 = build_scheduler(opt2, cfg, 20)
    sched2.load_state_dict(state)
    for o, s in ((opt, sched), (opt2, sched2)):
        o.step()
        s.step()
    assert [x["lr"] for x in opt2.param_groups] == pytest.approx([x["lr"] for x in opt.param_groups])


def test_bad_warmup_is_config_error():
    param = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ConfigError, match="warmup_iters"):
        build_scheduler(torch.optim.SGD([param], lr=0.1), ScheduleConfig(name="warmup_cosine", warmup_iters=-1), 10)
