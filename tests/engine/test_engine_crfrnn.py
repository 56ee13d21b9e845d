"""model.crf=meanfield: CRF-as-RNN on the network's logits, trained end to end through the engine."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _engine_helpers import CLI_TINY

from structseg.cli import main
from structseg.crf.layer import CRFRNN
from structseg.engine.build import build_model_from_config
from structseg.engine.config import load_config
from structseg.errors import ConfigError

CRF = ["model.crf=meanfield", "crf.iterations=2", "crf.sxy_bilateral=20"]


def test_the_route_builds_the_network_with_a_crf_on_its_logits() -> None:
    cfg = load_config(None, [*CLI_TINY, *CRF, "crf.compat_bilateral=7"])
    model = build_model_from_config(cfg, 4)
    assert isinstance(model, CRFRNN) and model.crf.config.iterations == 2 and model.crf.config.sxy_bilateral == 20
    assert model.crf.kernel_weights.tolist() == [3.0, 7.0]  # initialised from the crf: section
    assert {k.split(".")[0] for k in model.state_dict()} == {"base", "crf"}
    model.eval()
    mean, std = torch.tensor(model.crf.mean).view(3, 1, 1), torch.tensor(model.crf.std).view(3, 1, 1)
    x = (torch.rand(2, 3, 24, 28) - mean) / std  # an image normalized as the run normalizes its data
    with torch.no_grad():
        out = model(x)
        plain = model.base(x)
    assert out.shape == plain.shape == (2, 4, 24, 28) and not torch.allclose(out, plain)
    with pytest.raises(ConfigError, match="model.crf=meanfield .* model.head=ssvm"):
        build_model_from_config(load_config(None, [*CLI_TINY, *CRF, "model.head=ssvm"]), 4)


def test_the_crf_has_its_own_learning_rate_and_the_whole_network_the_reduced_one() -> None:
    from structseg.engine.build import build_optimizer

    cfg = load_config(None, [*CLI_TINY, *CRF, "optim.lr=0.01", "optim.backbone_lr_mult=0.001"])
    model = build_model_from_config(cfg, 4)
    groups = {g["name"]: g for g in build_optimizer(cfg, model).param_groups}
    crf = {id(p) for p in model.crf.parameters()}
    assert {id(p) for p in groups["head"]["params"]} == crf and groups["head"]["lr"] == 0.01
    assert {id(p) for p in groups["backbone"]["params"]} == {id(p) for p in model.base.parameters()}
    assert groups["backbone"]["lr"] == pytest.approx(1e-5)


def test_training_lowers_the_loss_and_learns_the_crf(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--set", *CLI_TINY, *CRF, "train.iterations=8", "optim.lr=0.02",
                 "train.eval_every=4"]) == 0
    import csv

    rows = [r for r in csv.DictReader(open(run / "log.csv")) if r["loss"]]
    losses = [float(r["loss"]) for r in rows]
    assert len(losses) == 8 and sum(losses[-3:]) < sum(losses[:3])
    ckpt = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert not torch.equal(ckpt["model"]["crf.kernel_weights"], torch.tensor([3.0, 10.0]))
    assert main(["eval", "--run-dir", str(run), "--no-progress"]) == 0
    assert 0.0 <= json.loads((run / "eval_val.json").read_text())["miou"] <= 1.0


def test_fine_tuning_a_plain_run_takes_its_network_and_builds_the_crf(tmp_path: Path, capsys) -> None:
    plain = tmp_path / "plain"
    assert main(["train", "--run-dir", str(plain), "--set", *CLI_TINY]) == 0
    tuned = tmp_path / "tuned"
    assert main(["train", "--run-dir", str(tuned), "--set", *CLI_TINY, *CRF, f"model.init_from={plain}",
                 "train.iterations=2"]) == 0
    assert "the CRF layer (crf.*) starts as built" in capsys.readouterr().out


def test_resume_of_the_route_is_bit_exact(tmp_path: Path) -> None:
    common = [*CLI_TINY, *CRF, "train.checkpoint_every=2", "train.eval_every=2", "schedule.name=constant",
              "schedule.warmup_iters=0"]
    assert main(["train", "--run-dir", str(tmp_path / "one"), "--set", *common, "train.iterations=4"]) == 0
    assert main(["train", "--run-dir", str(tmp_path / "two"), "--set", *common, "train.iterations=2"]) == 0
    assert main(["train", "--resume", str(tmp_path / "two"), "--set", "train.iterations=4"]) == 0
    a = torch.load(tmp_path / "one" / "checkpoints" / "latest.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "two" / "checkpoints" / "latest.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_layer_takes_any_input_and_folds_like_any_model() -> None:
    """Inside a network the CRF sees what the network is fed (BatchNorm folding's random probe, augmented
    batches): colors outside [0, 1] are clipped, where the stand-alone refiner refuses them."""
    from structseg.crf.dense import image_to_rgb255
    from structseg.models.fold import fold_batchnorm

    model = build_model_from_config(load_config(None, [*CLI_TINY, *CRF]), 4).eval()
    wild = torch.randn(1, 3, 24, 28) * 4
    with pytest.raises(ValueError, match="expected \\[0, 1\\]"):
        image_to_rgb255(wild, mean=model.crf.mean, std=model.crf.std)
    clipped = image_to_rgb255(wild, mean=model.crf.mean, std=model.crf.std, strict=False)
    assert float(clipped.min()) == 0.0 and float(clipped.max()) == 255.0
    folded, count = fold_batchnorm(model, wild)
    with torch.no_grad():
        torch.testing.assert_close(folded(wild), model(wild), atol=1e-3, rtol=1e-3)
    assert count > 0
