"""UperNet: PPM + FPN over the backbone levels, at every backbone / output stride, any input size."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from structseg.errors import ConfigError
from structseg.models import build_model
from structseg.models.upernet import FPN, PyramidPooling, UperNet, _adaptive_avg_pool

K = 4
ODD = (65, 97)


def _model(backbone: str = "resnet18", output_stride: int = 32, **options: object) -> UperNet:
    torch.manual_seed(0)
    model = build_model("upernet", K, backbone=backbone, output_stride=output_stride, channels=16, **options)
    assert isinstance(model, UperNet)
    return model


@pytest.mark.parametrize(("backbone", "output_stride"), [
    ("resnet18", 32), ("resnet18", 16), ("resnet18", 8), ("mobilenet_v2", 8), ("mobilenet_v3_large", 16),
])
def test_logits_match_odd_input_sizes_and_fusion_is_at_the_finest_level(backbone: str, output_stride: int) -> None:
    model = _model(backbone, output_stride).eval()
    strides = [model.backbone.strides[n] for n in model.levels]
    assert model.levels == ("c2", "c3", "c4", "c5") and strides[0] == 4 and strides[-1] == output_stride
    if output_stride < 32:
        assert len(set(strides)) < len(strides)  # dilation: levels that share a stride (and a size)
    for h, w in [ODD, (33, 47)]:
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            out = model.forward_features(x)
            c2 = model.backbone(x)["c2"]
        assert out["out"].shape == (1, K, h, w) and torch.isfinite(out["out"]).all()
        assert out["features"].shape == (1, 16, *c2.shape[-2:])


def test_every_used_level_and_every_ppm_branch_get_gradient() -> None:
    model = _model().train()
    x, size = torch.randn(2, 3, *ODD), ODD
    features = {k: v.detach().requires_grad_() for k, v in model.backbone(x).items()}
    _, logits = model.decode(features, size)
    F.cross_entropy(logits, torch.randint(0, K, (2, *logits.shape[-2:]))).backward()
    for level in ("c2", "c3", "c4", "c5"):
        assert features[level].grad is not None and features[level].grad.abs().sum() > 0, level
    assert features["c1"].grad is None
    ppm = model.classifier.ppm
    assert len(ppm.branches) == 4
    for name, p in ppm.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_levels_option_selects_and_orders_the_pyramid() -> None:
    model = _model(levels=["c5", "c3"]).train()  # a YAML list, in any order
    assert model.levels == ("c3", "c5")
    assert len(model.classifier.fpn.laterals) == 1
    assert model.classifier.ppm.branches[0][0].in_channels == model.backbone.channels["c5"]
    x = torch.randn(2, 3, *ODD)
    features = {k: v.detach().requires_grad_() for k, v in model.backbone(x).items()}
    x_feat, logits = model.decode(features, ODD)
    assert x_feat.shape[-2:] == features["c3"].shape[-2:]  # fused at the finest chosen level
    logits.sum().backward()
    assert [k for k, v in features.items() if v.grad is not None] == ["c3", "c5"]


def test_training_step_with_a_batch_of_one() -> None:
    model = _model(output_stride=16, aux=True).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    branches = model.classifier.ppm.branches
    bin1, bin2 = branches[0][1], branches[1][1]
    before1, before2 = bin1.running_mean.clone(), bin2.running_mean.clone()
    x, y = torch.randn(1, 3, *ODD), torch.randint(0, K, (1, *ODD))
    logits, aux = model.forward_train(x)
    loss = F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    weight = model.classifier.classifier.weight.detach().clone()
    opt.step()
    assert not torch.equal(weight, model.classifier.classifier.weight)
    # the 1x1 bin has one value per channel: its BN uses running statistics; the 2x2 bin's has 4 and trains
    assert torch.equal(bin1.running_mean, before1) and not torch.equal(bin2.running_mean, before2)
    assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize(("options", "fragments"), [
    ({"levels": ("c2", "c9")}, ["'c9'", "resnet18", "c1, c2, c3, c4, c5"]),
    ({"levels": ("C5",)}, ["'C5'"]),
    ({"levels": ("c5", "c5")}, ["twice"]),
    ({"levels": ()}, ["non-empty"]),
    ({"levels": "c5"}, ["levels='c5'"]),
    ({"pool_scales": (1, 0)}, ["pool_scales", "positive"]),
    ({"pool_scales": ()}, ["pool_scales"]),
    ({"channels": 0}, ["channels", "positive"]),
    ({"channels": "16"}, ["channels='16'", "int"]),
])
def test_bad_options_are_config_errors_naming_the_value(options: dict, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info, torch.device("meta"):
        build_model("upernet", K, backbone="resnet18", **options)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_pool_scales_set_the_ppm_branches() -> None:
    model = _model(pool_scales=(1, 2)).eval()
    ppm = model.classifier.ppm
    assert [b.scale for b in ppm.branches] == [1, 2]
    assert ppm.bottleneck[0].in_channels == model.backbone.channels["c5"] + 2 * 16
    default = _model().classifier.ppm
    assert [b.scale for b in default.branches] == [1, 2, 3, 6]
    assert default.bottleneck[0].in_channels == model.backbone.channels["c5"] + 4 * 16
    with torch.no_grad():
        assert model(torch.randn(1, 3, *ODD)).shape == (1, K, *ODD)


def test_defaults() -> None:
    with torch.device("meta"):
        model = build_model("upernet", K)
        mobile = build_model("upernet", K, backbone="mobilenet_v3_large")
    assert model.backbone.name == "resnet50" and model.backbone.output_stride == 32
    assert model.feature_channels == 128 and model.classifier.classifier.in_channels == 128
    assert model.levels == mobile.levels == ("c2", "c3", "c4", "c5")


@pytest.mark.parametrize("size", [1, 2, 3, 6])
def test_ppm_pooling_equals_adaptive_average_pooling(size: int) -> None:
    for h, w in [(1, 1), (2, 3), (5, 7), (12, 12), (13, 40)]:
        x = torch.randn(2, 3, h, w, dtype=torch.float64)
        torch.testing.assert_close(_adaptive_avg_pool(x, size), F.adaptive_avg_pool2d(x, size), rtol=0, atol=1e-12)
    x = torch.randn(1, 3, 20, 30, dtype=torch.bfloat16)
    pooled = _adaptive_avg_pool(x, size)
    assert pooled.dtype == torch.bfloat16
    torch.testing.assert_close(pooled.float(), F.adaptive_avg_pool2d(x.float(), size), rtol=1e-2, atol=1e-2)


def test_fpn_upsamples_to_each_lateral_not_by_two() -> None:
    fpn = FPN([8, 8, 8], 4).eval()
    ppm = PyramidPooling(8, 4).eval()
    maps = [torch.randn(1, 8, 17, 25), torch.randn(1, 8, 9, 13), torch.randn(1, 8, 9, 13)]  # c3, c4 share a stride
    top = torch.randn(1, 8, 9, 13)
    with torch.no_grad():
        out = fpn(maps, ppm(top))
    assert [o.shape[-2:] for o in out] == [(17, 25), (9, 13), (9, 13), (9, 13)]


def test_head_matches_segmentation_models_pytorch_upernet() -> None:
    """Same layers as smp's UPerNet decoder (without its LayerNorms), weights copied: same fused map."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    model = _model().eval()
    torch.manual_seed(1)
    for m in model.classifier.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics so that BN matters
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    reference = smp.UPerNet(encoder_name="resnet18", encoder_weights=None, decoder_channels=16, classes=K).eval()
    decoder, head = reference.decoder, model.classifier
    decoder.feature_norms = torch.nn.ModuleList(torch.nn.Identity() for _ in decoder.feature_norms)
    for theirs, ours in zip(decoder.psp.blocks, head.ppm.branches):
        theirs[1].load_state_dict(ours.state_dict())
    decoder.psp.out_conv.load_state_dict(head.ppm.bottleneck.state_dict())
    for theirs, ours in zip(decoder.fpn_lateral_blocks, reversed(head.fpn.laterals)):  # smp goes coarse to fine
        theirs.conv_norm_relu.load_state_dict(ours.state_dict())
    for theirs, ours in zip(decoder.fpn_conv_blocks, reversed(head.fpn.outputs)):
        theirs.load_state_dict(ours.state_dict())
    decoder.fusion_block.load_state_dict(head.fuse.state_dict())
    with torch.no_grad():
        features = model.backbone(torch.randn(2, 3, 64, 96))
        maps = [features[n] for n in model.levels]
        want = decoder([features["c1"], features["c1"], *maps])  # smp drops its first two (strides 1 and 2)
        torch.testing.assert_close(head.features(maps), want, rtol=1e-4, atol=1e-5)
