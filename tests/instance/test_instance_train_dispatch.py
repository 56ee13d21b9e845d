"""``structseg train`` on a ``task: instance`` config runs the Mask R-CNN pipeline."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from structseg.cli import main
from structseg.data import build_dataset
from structseg.instance.config import load_instance_config

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "instance_synthetic.yaml"
TINY = ["data.options={size: 64, length: 2}", "data.batch_size=2", "data.limit_val=2", "data.hflip=0.0",
        "model.backbone=mobilenet_v3_small", "model.min_size=64", "model.max_size=64",
        "model.anchor_sizes=[8, 16, 32, 64, 128]", "model.box_head_dim=64", "model.mask_head_layers=[32, 32]",
        "train.iterations=2", "train.warmup_iters=1", "train.eval_every=0", "train.log_every=1",
        "train.tensorboard=false", "train.progress=false", "train.device=cpu", "eval.figures=1"]


def test_train_dispatches_instance_configs(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", "--config", str(CONFIG), "--set", *TINY, "train.lr=0.005", "--run-dir", str(run)]) == 0
    saved = load_instance_config(run / "config.yaml")
    assert saved.train.lr == pytest.approx(0.005) and saved.model.backbone == "mobilenet_v3_small"
    assert saved.run_dir == str(run)  # --run-dir beats the config's runs/instance_synthetic
    ckpt = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    shapes = build_dataset("synthetic", None, "train", size=64, length=1).classes
    assert ckpt["iteration"] == 2 and ckpt["category_names"] == list(shapes.names)  # background: [] in the config
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["segm"]) >= {"AP", "AP50"} and metrics["images"] == 2
    assert f"run written to {run}" in capsys.readouterr().out

    assert main(["train", "--config", str(CONFIG), "--set", *TINY, "--run-dir", str(run)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["train", "--config", str(CONFIG), "--set", *TINY, "train.iterations=1", "--run-dir", str(run),
                 "--overwrite"]) == 0
    assert torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["iteration"] == 1
    assert main(["train", "--resume", str(run)]) == 2
    assert "--resume is not supported for task: instance" in capsys.readouterr().err


def test_train_task_errors(tmp_path: Path, capsys) -> None:
    odd = tmp_path / "odd.yaml"
    odd.write_text("task: panoptic\nmodel: {name: unet}\n")
    assert main(["train", "--config", str(odd)]) == 2
    err = capsys.readouterr().err
    assert str(odd) in err and "unknown task 'panoptic'" in err

    assert main(["train", "--config", str(CONFIG), "--set", "train.iteratons=3", "--run-dir", str(tmp_path / "r")]) == 2
    assert "train.iteratons" in capsys.readouterr().err  # overrides are checked by the instance schema

    assert main(["train", "--config", str(CONFIG), "--resume", str(tmp_path)]) == 2
    assert "task: instance" in capsys.readouterr().err
