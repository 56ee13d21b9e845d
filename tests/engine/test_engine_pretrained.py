"""A trained model leaves structseg as a pretrained directory (config.json, model.safetensors, model card), and
comes back through structseg.from_pretrained and every command that takes a run directory."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _engine_helpers import CLI_TINY

import structseg
from structseg.cli import main
from structseg.engine.predict import Predictor
from structseg.errors import CheckpointError
from structseg.models import build_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pretrained")
    run, out = root / "run", root / "exported"
    assert main(["train", "--run-dir", str(run), "--set", *CLI_TINY]) == 0
    assert main(["export", "--run-dir", str(run), "--format", "pretrained", "-o", str(out)]) == 0
    return run, out


def test_the_directory_holds_config_weights_and_a_model_card(exported) -> None:
    run, out = exported
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    record = json.loads((out / "config.json").read_text())
    assert record["format"] == "structseg-pretrained" and record["checkpoint"]["which"] == "best"
    assert record["classes"]["names"] and record["normalization"]["mean"] == [0.485, 0.456, 0.406]
    card = (out / "README.md").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    assert f"mIoU {100 * metrics['final']['miou']:.2f}" in card
    assert all(f"| {name} |" in card for name in record["classes"]["names"])
    assert "trained from random weights" in card and "machine: device cpu" in card
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:  # plain tensors, no pickle
        assert f.metadata()["format"] == "structseg-pretrained" and len(list(f.keys())) > 10


def test_from_pretrained_predicts_what_the_run_predicts(exported) -> None:
    run, out = exported
    image = torch.randint(0, 256, (3, 37, 45), dtype=torch.uint8)
    ours = structseg.from_pretrained(out, device="cpu")
    reference = Predictor.from_run(run, device="cpu")
    torch.testing.assert_close(ours.predict_proba(image), reference.predict_proba(image))
    assert torch.equal(ours.predict(image), reference.predict(image))


def test_commands_take_the_directory_like_a_run(exported, tmp_path: Path) -> None:
    run, out = exported
    assert main(["eval", "--run-dir", str(out), "--no-progress"]) == 0
    evaluated = json.loads((out / "eval_val.json").read_text())
    original = tmp_path / "orig.json"
    assert main(["eval", "--run-dir", str(run), "--no-progress", "-o", str(original)]) == 0
    assert evaluated["miou"] == pytest.approx(json.loads(original.read_text())["miou"])
    images = tmp_path / "img"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (24, 20), (90, 30, 200)).save(images / "a.png")
    assert main(["predict", "--run-dir", str(out), str(images), "-o", str(tmp_path / "pred")]) == 0
    assert (tmp_path / "pred" / "a_mask.png").is_file()
    assert main(["compare", "--runs", str(run), str(out), "--split", "val", "--count", "2",
                 "-o", str(tmp_path / "cmp.png")]) == 0


def test_a_built_model_saves_and_loads_itself(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("unet", 3, base_channels=4).eval()
    model.save_pretrained(tmp_path / "m")
    loaded = structseg.from_pretrained(tmp_path / "m", device="cpu")
    x = torch.randn(1, 3, 33, 41)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x))
    assert loaded.classes.names == ("class_0", "class_1", "class_2")


def test_broken_directories_are_named(tmp_path: Path, exported) -> None:
    _, out = exported
    with pytest.raises(CheckpointError, match="not a structseg pretrained directory"):
        structseg.from_pretrained(tmp_path)
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    record = json.loads((out / "config.json").read_text())
    record["version"] = 99
    (newer / "config.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"config.json: format .* version 99"):
        structseg.from_pretrained(newer)
