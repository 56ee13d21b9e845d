"""DepthwiseConv2d: the custom backward is the convolution's exact gradient."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from structseg.models.backbones import build_backbone
from structseg.models.ops import DepthwiseConv2d, _DepthwiseConvFn, convert_depthwise


@pytest.mark.parametrize(("kernel", "stride", "dilation", "bias"),
                         [(5, 1, 1, False), (5, 2, 1, True), (5, 1, 2, True), (7, 1, 3, False), (3, 1, 1, True)])
def test_backward_passes_gradcheck(kernel: int, stride: int, dilation: int, bias: bool) -> None:
    torch.manual_seed(0)
    pad = (dilation * (kernel - 1) // 2,) * 2
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, kernel, kernel, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True) if bias else None

    def fn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return _DepthwiseConvFn.apply(x, w, b, (stride, stride), pad, (dilation, dilation), torch.float64)

    assert torch.autograd.gradcheck(fn, (x, w, b))
    torch.testing.assert_close(fn(x, w, b), F.conv2d(x, w, b, stride, pad, dilation, 3))


def test_bf16_autocast_gradients_match_the_plain_convolution() -> None:
    torch.manual_seed(0)
    plain = nn.Conv2d(16, 16, 5, padding=4, dilation=2, groups=16)
    fast = convert_depthwise(nn.Sequential(nn.Conv2d(16, 16, 5, padding=4, dilation=2, groups=16)))[0]
    fast.load_state_dict(plain.state_dict())
    assert isinstance(fast, DepthwiseConv2d)
    x = torch.randn(4, 16, 20, 24).contiguous(memory_format=torch.channels_last)
    target = torch.randn(4, 16, 20, 24)
    grads = []
    for conv in (plain, fast):
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = conv(xi)
        assert out.dtype == torch.bfloat16
        ((out.float() - target) ** 2).mean().backward()
        grads.append((xi.grad, conv.weight.grad, conv.bias.grad))
    for mine, ref in zip(grads[1], grads[0]):
        assert ((mine.float() - ref.float()).norm() / ref.float().norm()) < 0.02


def test_conversion_keeps_parameters_and_skips_other_convs() -> None:
    seq = nn.Sequential(nn.Conv2d(8, 8, 5, padding=2, groups=8), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                        nn.Conv2d(8, 4, 5, padding=2), nn.Conv2d(8, 8, 5, padding=0, groups=8))
    weight, keys = seq[0].weight, list(seq.state_dict())
    convert_depthwise(seq)
    assert [type(m) for m in seq] == [DepthwiseConv2d, nn.Conv2d, nn.Conv2d, nn.Conv2d]
    assert seq[0].weight is weight and list(seq.state_dict()) == keys
    backbone = build_backbone("mobilenet_v3_large")
    assert sum(isinstance(m, DepthwiseConv2d) for m in backbone.modules()) == 6  # MobileNetV3-Large's 5x5 blocks
