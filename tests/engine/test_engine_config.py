"""Config: YAML -> dataclasses, overrides, errors naming the key, round trip."""
from __future__ import annotations

import pytest
import torch

from structseg.engine.config import (
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from structseg.errors import ConfigError


def write(tmp_path, text: str):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_embedded_default_loads_and_differs_from_dataclass_defaults():
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    assert cfg.data.layout == "synthetic"
    assert cfg.train.iterations > 0


def test_file_values_and_overrides_apply(tmp_path):
    path = write(tmp_path, "train:\n  iterations: 50\noptim:\n  name: adamw\n  lr: 1e-3\n")
    cfg = load_config(path, ["train.iterations=7", "data.options.length=8", "eval.scales=[0.5, 1.0]",
                             "train.eval_every=epoch", "data.crop_size=[32, 48]", "loss.0.weight=0.5"])
    assert cfg.train.iterations == 7
    assert cfg.optim.name == "adamw" and cfg.optim.lr == pytest.approx(1e-3)  # "1e-3" read as float
    assert cfg.data.options == {"length": 8}
    assert cfg.eval.scales == [0.5, 1.0]
    assert cfg.train.eval_every == "epoch"
    assert cfg.data.crop_size == [32, 48]
    assert cfg.loss[0].weight == 0.5


def test_loss_list_override_builds_terms():
    cfg = apply_overrides(Config(), ["loss=[{name: focal, params: {gamma: 2}}, {name: dice, weight: 0.5}]"])
    assert [(t.name, t.weight, t.params) for t in cfg.loss] == [("focal", 1.0, {"gamma": 2}), ("dice", 0.5, {})]


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.iteratons=5", "train.iteratons"),
        ("trian.iterations=5", "trian"),
        ("loss.0.nme=focal", "loss.0.nme"),
    ],
)
def test_unknown_key_is_named(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        apply_overrides(Config(), [override])


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.iterations=abc", "train.iterations"),
        ("train.iterations=2.5", "train.iterations"),
        ("train.deterministic=1", "train.deterministic"),
        ("optim.name=adamax", "optim.name"),
        ("eval.scales=0.5", "eval.scales"),
        ("train.eval_every=weekly", "train.eval_every"),
        ("data.options=3", "data.options"),
    ],
)
def test_wrong_type_is_named(override, key):
    with pytest.raises(ConfigError, match=f"'{key}' expects"):
        apply_overrides(Config(), [override])


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = write(tmp_path, "model:\n  nmae: unet\n")
    with pytest.raises(ConfigError, match=r"cfg\.yaml.*'model\.nmae'"):
        load_config(path)


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(Config(), ["train.iterations"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_round_trip(tmp_path):
    cfg = load_config(None, ["optim.lr=0.003", "loss=[{name: cross_entropy}, {name: dice, weight: 0.25}]",
                             "model.output_stride=8", "run_dir=somewhere"])
    path = save_config(cfg, tmp_path / "out.yaml")
    again = load_config(path)
    assert again == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("name", ["camvid_cpu", "camvid_cpu_pretrained", "camvid_gpu", "seed_deeplabv3plus_r50_ce",
                                  "seed_deeplabv3plus_r50_focal"])
def test_shipped_configs_are_valid(name):
    """Every shipped recipe loads, names a registered model/backbone and buildable losses."""
    from pathlib import Path

    from structseg.engine.build import build_criterion
    from structseg.models import model_spec

    cfg = load_config(Path(__file__).parents[2] / "configs" / f"{name}.yaml")
    spec = model_spec(cfg.model.name)
    assert (cfg.model.backbone or spec.default_backbone) in spec.backbones
    criterion = build_criterion(cfg, num_classes=11, ignore_index=255)
    logits, target = torch.randn(2, 11, 4, 4), torch.randint(0, 11, (2, 4, 4))
    total, parts = criterion(logits, target)
    assert torch.isfinite(total) and set(parts) == {t.name for t in cfg.loss}


def test_seed_recipe_is_the_assignment():
    from pathlib import Path

    for loss in ("ce", "focal"):
        cfg = load_config(Path(__file__).parents[2] / "configs" / f"seed_deeplabv3plus_r50_{loss}.yaml")
        assert (cfg.model.name, cfg.model.backbone, cfg.data.batch_size, cfg.train.iterations) == (
            "deeplabv3plus", "resnet50", 8, 5000)
        assert (cfg.optim.name, cfg.schedule.name, cfg.schedule.step_size, cfg.schedule.gamma) == (
            "sgd", "step", 1000, 0.1)
        assert cfg.optim.backbone_lr_mult == 0.1 and cfg.train.eval_every == "epoch"
    assert cfg.loss[0].name == "focal"
