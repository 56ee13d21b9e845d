"""Heads against independent references: torchvision's segmentation models and F.interpolate."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.models.segmentation as tvseg
from torch import nn

from structseg.models import build_model
from structseg.models.deeplab import ASPPConv
from structseg.models.fcn import BilinearUpsample

# (torchvision builder, our name, our options); torchvision's defaults: output stride 8 for ResNet,
# 16 with ASPP rates (12, 24, 36) for MobileNetV3.
TORCHVISION = [
    (tvseg.fcn_resnet50, "fcn", {"backbone": "resnet50", "output_stride": 8}),
    (tvseg.deeplabv3_resnet50, "deeplabv3", {"backbone": "resnet50", "output_stride": 8}),
    (tvseg.deeplabv3_mobilenet_v3_large, "deeplabv3",
     {"backbone": "mobilenet_v3_large", "output_stride": 16, "atrous_rates": (12, 24, 36)}),
]
IDS = ["fcn_resnet50", "deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large"]


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("builder", "name", "options"), TORCHVISION, ids=IDS)
def test_parameter_counts_equal_torchvision(builder, name: str, options: dict) -> None:  # noqa: ANN001
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        for aux in (False, True):
            ref = builder(weights=None, weights_backbone=None, num_classes=21, aux_loss=aux)
            assert _count(build_model(name, 21, aux=aux, **options)) == _count(ref), f"aux={aux}"


def _torchvision_key(key: str, mobilenet: bool) -> str:
    return key.replace("backbone.features.", "backbone.") if mobilenet else key


@pytest.mark.parametrize(("builder", "name", "options"), TORCHVISION, ids=IDS)
def test_torchvision_checkpoints_load_and_give_the_same_logits(builder, name: str, options: dict) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    ref = builder(weights=None, weights_backbone=None, num_classes=4, aux_loss=True).eval()
    ours = build_model(name, 4, aux=True, **options).eval()
    mobilenet = options["backbone"].startswith("mobilenet")
    ref_state = ref.state_dict()
    ours.load_state_dict({k: ref_state[_torchvision_key(k, mobilenet)] for k in ours.state_dict()})
    x = torch.randn(2, 3, 64, 72)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x)["out"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("learnable", [True, False])
@pytest.mark.parametrize("factor", [2, 8, 32])
def test_transposed_conv_upsampling_is_bilinear_in_the_interior(factor: int, learnable: bool) -> None:
    up = BilinearUpsample(3, factor, learnable=learnable)
    x = torch.randn(2, 3, 5, 6)
    got = up(x)
    want = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    assert got.shape == want.shape
    inner = (slice(None), slice(None), slice(factor, -factor), slice(factor, -factor))
    torch.testing.assert_close(got[inner], want[inner])
    assert [p.requires_grad for p in up.parameters()] == ([True] if learnable else [])


def test_fcn_upsampling_frozen_final_learned_inner_by_default() -> None:
    model = build_model("fcn8s", 3, backbone="alexnet", fc_channels=8)
    assert model.up_pool4.learnable and model.up_final.learnable and not model.up_out.learnable
    frozen = build_model("fcn8s", 3, backbone="alexnet", fc_channels=8, learnable_upsample=False)
    assert not any(m.learnable for m in frozen.modules() if isinstance(m, BilinearUpsample))
    # skip scores start at zero, so an untrained FCN-8s predicts what its stride-32 scores say
    assert not model.score_pool3.weight.any() and not model.score_pool4.weight.any()


@pytest.mark.parametrize(("os_", "rates"), [(16, [6, 12, 18]), (8, [12, 24, 36])])
def test_atrous_rates_follow_output_stride(os_: int, rates: list[int]) -> None:
    for name in ("deeplabv3", "deeplabv3plus"):
        model = build_model(name, 3, backbone="resnet18", output_stride=os_)
        dilations = [m[0].dilation[0] for m in model.modules() if isinstance(m, ASPPConv)]
        assert dilations == rates, name


def test_deeplabv3plus_decoder_fuses_stride4_features() -> None:
    model = build_model("deeplabv3plus", 3, backbone="resnet18").eval()
    assert model.classifier.project_low[0].out_channels == 48
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = model.forward_features(x)["features"]
    assert feats.shape == (1, 256, 16, 24)  # stride 4, where the low-level features are


def test_unet_mirrors_its_encoder() -> None:
    model = build_model("unet", 3, base_channels=4).eval()
    assert [model.backbone.channels[f"c{i}"] for i in range(5)] == [4, 8, 16, 32, 64]
    assert [up.out_channels for up in model.ups] == [32, 16, 8, 4]
    assert model.size_divisor == 16
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 50, 70))["features"]
    assert feats.shape == (1, 4, 50, 70)  # the decoder runs at 64x80 (padded to 16s); the padding is cropped
