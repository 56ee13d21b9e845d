"""Everyday options: Adam, multi-step and reduce-on-plateau schedules, labels/ folders, classic on folders, help
on every data option."""
from __future__ import annotations

import argparse
import copy

import pytest
import torch
from torch import nn

from structseg.cli import build_parser, main
from structseg.engine.build import build_optimizer
from structseg.engine.config import load_config
from structseg.engine.schedules import MultiStepFactor, PlateauFactor, build_scheduler, schedule_factor


def test_adam_and_adamw_take_momentum_as_beta1() -> None:
    model = nn.Linear(3, 2)
    adam = build_optimizer(load_config(None, ["optim.name=adam", "optim.lr=0.01", "optim.momentum=0.8"]), model)
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["betas"] == (0.8, 0.999)
    adamw = build_optimizer(load_config(None, ["optim.name=adamw", "optim.lr=0.01"]), model)
    assert type(adamw) is torch.optim.AdamW and adamw.param_groups[0]["betas"] == (0.9, 0.999)
    with pytest.raises(Exception, match="'optim.momentum' must be in \\[0, 1\\)"):
        load_config(None, ["optim.momentum=1.0"])


def test_multistep_multiplies_at_each_milestone() -> None:
    cfg = load_config(None, ["schedule.name=multistep", "schedule.milestones=[4, 2]", "schedule.gamma=0.5",
                                "schedule.warmup_iters=0"]).schedule
    factor = schedule_factor(cfg, 10)
    assert isinstance(factor, MultiStepFactor)
    assert [factor(i) for i in range(6)] == [1, 1, 0.5, 0.5, 0.25, 0.25]


def test_plateau_reduces_after_patience_and_its_state_survives_a_resume() -> None:
    cfg = load_config(None, ["schedule.name=plateau", "schedule.patience=2", "schedule.gamma=0.1",
                             "schedule.warmup_iters=0"]).schedule
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = build_scheduler(opt, cfg, 100)
    factor = sched.lr_lambdas[0]
    assert isinstance(factor, PlateauFactor)
    for miou in (0.3, 0.5, 0.5, 0.49):  # best 0.5, then two evaluations without improvement
        factor.observe(miou)
    assert factor.scale == pytest.approx(0.1) and factor(10) == pytest.approx(0.1)
    factor.observe(0.6)
    assert factor.scale == pytest.approx(0.1) and factor.best == 0.6
    state = copy.deepcopy(sched.state_dict())
    fresh = build_scheduler(torch.optim.SGD([param], lr=1.0), cfg, 100)
    fresh.load_state_dict(state)
    restored = fresh.lr_lambdas[0]
    current = schedule_factor(cfg, 200).__dict__  # what a resume with more iterations applies
    restored.__dict__.update({k: v for k, v in current.items() if k not in restored.runtime})
    assert restored.scale == pytest.approx(0.1) and restored.best == 0.6 and restored.total_iters == 200


def test_folder_layout_reads_masks_from_labels(make_tiny_dataset) -> None:
    from structseg.data import build_dataset

    data = make_tiny_dataset("folder")
    (data.root / "masks").rename(data.root / "labels")
    ds = build_dataset("folder", data.root, "train")
    image, mask = ds.load(0)
    assert torch.equal(mask, torch.from_numpy(data.items["train"][0].mask))


def test_classic_segments_every_image_of_a_folder(tmp_path) -> None:
    import numpy as np
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg"):
        Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(folder / name)
    out = tmp_path / "out"
    assert main(["classic", "--method", "kmeans", "-p", "k=3", str(folder), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}_{kind}.png" for stem in ("a", "b") for kind in ("ids", "segments", "overlay"))


def test_every_data_option_has_help() -> None:
    parser = build_parser()
    data = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["data"]
    sub = next(a for a in data._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"data {name} {'/'.join(action.option_strings)}"
               for name, p in sub.choices.items() for action in p._actions
               if action.option_strings and not action.help and action.dest != "help"]
    assert missing == []
