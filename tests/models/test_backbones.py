"""Backbones: level shapes, dilation, and agreement with torchvision's networks."""
from __future__ import annotations

import pytest
import torch
import torchvision.models as tvm
from torchvision.models._utils import IntermediateLayerGetter

from structseg.errors import ConfigError
from structseg.models.backbones import build_backbone, list_backbones

CASES = [
    ("resnet18", 32), ("resnet18", 16), ("resnet18", 8), ("resnet34", 16), ("resnet50", 8),
    ("mobilenet_v3_large", 32), ("mobilenet_v3_large", 16), ("alexnet", 32), ("vgg16_bn", 32),
    ("mobilenet_v2", 32), ("mobilenet_v2", 16), ("mobilenet_v2", 8),
]


@pytest.mark.parametrize(("name", "os_"), CASES, ids=[f"{n}-os{s}" for n, s in CASES])
def test_levels_have_declared_channels_and_strides(name: str, os_: int) -> None:
    options = {"fc_channels": 16} if name in ("alexnet", "vgg16_bn") else {}
    backbone = build_backbone(name, output_stride=os_, **options).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = backbone(x)
    assert list(feats) == list(backbone.channels)
    for level, f in feats.items():
        stride = backbone.strides[level]
        assert f.shape == (1, backbone.channels[level], 64 // stride, 96 // stride), level
    assert backbone.strides[backbone.final_level] == backbone.output_stride == os_
    assert backbone.aux_level in feats


def test_vgg16_pool_levels_and_conv_fc7() -> None:
    backbone = build_backbone("vgg16", fc_channels=16).eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats.values()] == [
        (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2), (16, 2, 2)]


@pytest.mark.parametrize(("name", "os_"), [("resnet18", 32), ("resnet50", 8)])
def test_resnet_matches_torchvision(name: str, os_: int) -> None:
    """Same weights give the same layer outputs as torchvision's network (dilated the torchvision way)."""
    ours = build_backbone(name, output_stride=os_).eval()
    dilate = {32: None, 8: [False, True, True]}[os_]
    ref = getattr(tvm, name)(weights=None, replace_stride_with_dilation=dilate).eval()
    ref.load_state_dict({**ours.state_dict(), "fc.weight": ref.fc.weight, "fc.bias": ref.fc.bias})
    body = IntermediateLayerGetter(ref, {"layer1": "c2", "layer2": "c3", "layer3": "c4", "layer4": "c5"})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        mine, theirs = ours(x), body(x)
    for level in theirs:
        torch.testing.assert_close(mine[level], theirs[level])


@pytest.mark.parametrize(("name", "os_", "step"), [("resnet18", 16, 2), ("resnet18", 8, 4), ("resnet50", 16, 2)])
def test_dilation_is_the_atrous_algorithm(name: str, os_: int, step: int) -> None:
    """A dilated ResNet computes the undilated network's outputs densely: subsampling gives them back exactly."""
    plain = build_backbone(name, output_stride=32).eval()
    dense = build_backbone(name, output_stride=os_).eval()
    dense.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = plain(x)["c5"], dense(x)["c5"]
    assert b.shape[-1] == a.shape[-1] * step
    scale = a.abs().max().item()  # float32 sums in another order: relative to the output's scale
    torch.testing.assert_close(b[..., ::step, ::step], a, atol=1e-5 * scale, rtol=1e-4)


def test_mobilenet_matches_torchvision_dilated() -> None:
    ours = build_backbone("mobilenet_v3_large", output_stride=16).eval()
    ref = tvm.mobilenet_v3_large(weights=None, dilated=True).eval()
    ref.features.load_state_dict({k.removeprefix("features."): v for k, v in ours.state_dict().items()})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)["c5"], ref.features(x))


def test_unknown_backbone_and_stride_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="resnet50") as info:
        build_backbone("resnet51")
    assert "mobilenet_v3_large" in str(info.value)
    with pytest.raises(ConfigError, match="valid: 32, 16"):
        build_backbone("mobilenet_v3_large", output_stride=8)
    with pytest.raises(ConfigError, match="fc_channels"):
        build_backbone("resnet18", fc_channels=3)
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "vgg16", "alexnet", "mobilenet_v3_large"} <= set(
        list_backbones())
