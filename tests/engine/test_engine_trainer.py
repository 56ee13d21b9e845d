"""Trainer on tiny stand-ins: outputs, parameter groups, NaN stop, data errors, shape-changing resume."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from _engine_helpers import TinyNet, TinySegDataset, run_tiny

from structseg.engine.trainer import NonFiniteLossError
from structseg.errors import CheckpointError, DataError


def test_run_directory_contents_and_weights_only_checkpoints(tmp_path):
    trainer, result = run_tiny(tmp_path)
    run = trainer.run
    for path in (run.config, run.log, run.latest, run.best, run.metrics,
                 run.figures / "miou_curve.png", run.figures / "loss_curve.png"):
        assert path.is_file(), path
    assert any(run.tb.iterdir())
    ckpt = torch.load(run.latest, weights_only=True)
    assert ckpt["iteration"] == 6 and ckpt["classes"]["names"] == ["a", "b", "c"]
    assert ckpt["config"]["train"]["iterations"] == 6
    with open(run.log) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["iteration"]) for r in rows if r["val_miou"]] == [3, 6]
    assert [int(r["iteration"]) for r in rows if r["loss"]] == [1, 2, 3, 4, 5, 6]
    metrics = json.loads(run.metrics.read_text())
    assert metrics["best_miou"] == pytest.approx(result.best_miou)
    assert metrics["final"]["miou"] == pytest.approx(result.final_metrics.miou)
    best = torch.load(run.best, weights_only=True)
    assert best["iteration"] == result.best_iteration


def test_backbone_gets_tenth_of_head_lr(tmp_path):
    trainer, _ = run_tiny(tmp_path, "optim.backbone_lr_mult=0.1", "schedule.name=constant")
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert groups["backbone"]["lr"] == pytest.approx(0.1 * groups["head"]["lr"])
    backbone_ids = {id(p) for p in trainer.model.backbone.parameters()}
    assert {id(p) for p in groups["backbone"]["params"]} == backbone_ids
    assert not backbone_ids & {id(p) for p in groups["head"]["params"]}


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    model = TinyNet()
    model.nan_after = 4  # the 5th training forward pass returns NaN
    with pytest.raises(NonFiniteLossError, match=r"not finite at iteration 5.*latest\.pt \(iteration 3\)"):
        run_tiny(tmp_path, model=model)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["iteration"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    fresh = TinyNet()
    fresh.load_state_dict(ckpt["model"])


def test_label_outside_classes_names_the_item(tmp_path):
    with pytest.raises(DataError, match=r"do not fit the 3 classes.*tiny item 2"):
        run_tiny(tmp_path, "train.iterations=2", train_set=TinySegDataset(4, bad_label_at=2))


def test_class_count_and_empty_split_errors(tmp_path):
    with pytest.raises(DataError, match=r"model\.num_classes=5 but the data .* has 3 classes"):
        run_tiny(tmp_path, "model.num_classes=5")
    with pytest.raises(DataError, match="empty"):
        run_tiny(tmp_path, val_set=TinySegDataset(0))
    with pytest.raises(DataError, match="fewer than the batch size"):
        run_tiny(tmp_path, train_set=TinySegDataset(2))


def test_resume_with_changed_model_names_keys(tmp_path):
    run_tiny(tmp_path, "train.iterations=3")
    with pytest.raises(CheckpointError, match=r"backbone\.0\.weight \(8, 3, 3, 3\) vs model \(4, 3, 3, 3\)"):
        run_tiny(tmp_path, "train.iterations=6", "train.resume=true", model=TinyNet(width=4))


def test_hook_can_stop_early_with_final_eval_and_checkpoint(tmp_path):
    def stop(trainer):
        if trainer.iteration == 2:
            trainer.stop_requested = True

    trainer, result = run_tiny(tmp_path, "train.iterations=50", "train.eval_every=100",
                               hooks={"step_end": [stop]})
    assert result.iterations == 2 and result.final_metrics is not None
    assert torch.load(trainer.run.latest, weights_only=True)["iteration"] == 2
    assert result.seconds > 0


class _FakeTime:
    """``time`` with a ``perf_counter`` that advances half a second per call (a step = 0.5 s)."""

    def __init__(self) -> None:
        import time as real

        self._real, self.now = real, 0.0

    def perf_counter(self) -> float:
        self.now += 0.5
        return self.now

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.mark.parametrize("by_time", [False, True])
def test_schedule_by_time_ends_the_decay_at_the_budget(tmp_path, monkeypatch, by_time):
    import math

    import structseg.engine.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "time", _FakeTime())
    lrs = []
    trainer, result = run_tiny(
        tmp_path, "train.iterations=100", "train.eval_every=100", f"train.max_minutes={5 / 60}",
        "schedule.name=warmup_cosine", "schedule.warmup_iters=0", "schedule.min_lr_ratio=0.0",
        "optim.backbone_lr_mult=1.0", f"schedule.by_time={str(by_time).lower()}",
        hooks={"step_end": [lambda t: lrs.append(t.optimizer.param_groups[0]["lr"])]})
    base = trainer.scheduler.base_lrs[0]
    assert result.iterations == 10 and result.seconds == pytest.approx(5.0)
    cosine = [0.5 * (1 + math.cos(math.pi * min(p, 100) / 100)) for p in range(101)]
    expected = [base * cosine[10 * k if by_time else k] for k in range(1, 11)]
    assert lrs == pytest.approx(expected)


def test_schedule_by_time_needs_a_budget(tmp_path):
    with pytest.raises(Exception, match="max_minutes"):
        run_tiny(tmp_path, "schedule.by_time=true")
