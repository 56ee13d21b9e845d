"""``structseg config show`` documents every field; ``structseg models`` lists what can be built."""
from __future__ import annotations

import dataclasses
import typing

import yaml

from structseg.cli import main
from structseg.engine.config import Config, config_from_dict, config_to_dict, load_config
from structseg.engine.config_help import HELP


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _leaf_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def test_every_config_field_has_help_and_no_help_is_stale() -> None:
    keys = _leaf_keys(Config)
    assert [k for k in keys if not HELP.get(k)] == []
    term_keys = {f"loss.N.{f.name}" for f in dataclasses.fields(type(Config().loss[0]))}
    assert set(HELP) - set(keys) == term_keys


def test_config_show_is_the_resolved_config_with_type_default_and_help(tmp_path, capsys) -> None:
    assert main(["config", "show", "--set", "data.batch_size=4", "optim.lr=0.5"]) == 0
    text = capsys.readouterr().out
    assert "batch_size: 4  # int >= 1 (default 8): global batch size" in text
    assert "lr: 0.5  # float > 0 (default 0.01): learning rate of the head" in text
    assert "solver: bp  # str (default bp): loss-augmented inference solver" in text
    assert sum(line.count("#") for line in text.splitlines()) >= len(_leaf_keys(Config)) - 1
    shown = config_from_dict(yaml.safe_load(text))  # it reads back as the same config
    assert config_to_dict(shown) == config_to_dict(load_config(None, ["data.batch_size=4", "optim.lr=0.5"]))


def test_models_lists_every_model_and_backbone_and_where_weights_come_from(capsys) -> None:
    from structseg.models import list_models
    from structseg.models.backbones import list_backbones

    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert all(f"  {name} " in text for name in list_models())
    rows = {line.split()[0]: line for line in text.split("\nbackbones:")[1].splitlines()[2:] if line.strip()}
    assert set(rows) == set(list_backbones())
    import torchvision.models as tvm

    ref = tvm.resnet18()
    encoder = sum(p.numel() for p in ref.parameters()) - sum(p.numel() for p in ref.fc.parameters())
    assert "online" in rows["resnet18"] and f"{encoder / 1e6:.1f}M" in rows["resnet18"]
    assert "offline" in rows["mobilenet_v2"] and "mobilenet_v2-b0353104.pth" in rows["mobilenet_v2"]
    assert "offline" in rows["efficientnet_lite0"] and "top-1 75.1%" in rows["efficientnet_lite0"]
