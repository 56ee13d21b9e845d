"""Convolutions that steer around oneDNN's CPU bf16 kernels where those are slow or broken.

* :class:`DepthwiseConv2d`: a depthwise convolution whose backward pass avoids slow kernels (below).
* :class:`Float32TrainConv2d`: a wide-in, narrow-out 1x1 convolution that trains in fp32 under CPU
  autocast, because oneDNN's bf16 kernel for that shape corrupts the heap (:func:`bf16_conv_defect`).

Depthwise (torch 2.14.1 on a CPU with AVX512-BF16, one thread, batch 8): for 5x5 depthwise convolutions
the bf16 weight gradient takes 20-50x the forward time, and dilated ones are slow for the input
gradient too. Here, for kernels of 5 and more, the input gradient of a stride-1 convolution is the
forward convolution of the output gradient with the flipped kernel (fast), and the weight gradient
is computed in float32 (3-4x faster than bf16, and more exact). MobileNetV3 training steps get
about 20% faster. Outside CPU autocast with gradients, the module is a plain ``nn.Conv2d``.
"""
from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DepthwiseConv2d", "Float32TrainConv2d", "bf16_conv_defect", "convert_depthwise", "guard_bf16_conv_defect"]

_aten = torch.ops.aten


class _DepthwiseConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int],
                padding: tuple[int, int], dilation: tuple[int, int], dtype: torch.dtype) -> Tensor:
        xc, wc = x.to(dtype), weight.to(dtype)
        ctx.save_for_backward(xc, weight)
        ctx.conf = (stride, padding, dilation, bias is not None, x.dtype)
        return F.conv2d(xc, wc, None if bias is None else bias.to(dtype), stride, padding, dilation, weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, dilation, has_bias, x_dtype = ctx.conf
        groups = weight.shape[0]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            w = weight.to(grad.dtype)
            if stride == (1, 1):
                grad_x = F.conv2d(grad, w.flip(-1, -2), None, 1, padding, dilation, groups)
            else:
                grad_x = _aten.convolution_backward(grad, x, w, None, stride, padding, dilation, False, [0, 0],
                                                    groups, [True, False, False])[0]
            grad_x = grad_x.to(x_dtype)
        if ctx.needs_input_grad[1]:
            grad_w = _aten.convolution_backward(grad.float(), x.float(), weight.float(), None, stride, padding,
                                                dilation, False, [0, 0], groups, [False, True, False])[1]
            grad_w = grad_w.to(weight.dtype)
        if has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.float().sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None, None


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` with ``groups == in_channels == out_channels``, odd kernel and "same" padding,
    using the faster backward above while CPU autocast is on and gradients are needed."""

    def forward(self, x: Tensor) -> Tensor:
        if (x.device.type == "cpu" and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
                and (x.requires_grad or self.weight.requires_grad)):
            out: Tensor = _DepthwiseConvFn.apply(x, self.weight, self.bias, self.stride, self.padding,
                                                 self.dilation, torch.get_autocast_dtype("cpu"))
            return out
        return super().forward(x)


def _eligible(conv: nn.Module, min_kernel: int) -> bool:
    if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros":
        return False
    k, d = conv.kernel_size, conv.dilation
    same = conv.padding == (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)
    return (conv.groups == conv.in_channels == conv.out_channels and k[0] == k[1] >= min_kernel
            and k[0] % 2 == 1 and same)


def convert_depthwise(module: nn.Module, min_kernel: int = 5) -> nn.Module:
    """Replace, in place, eligible depthwise ``nn.Conv2d`` children by :class:`DepthwiseConv2d` sharing their
    parameters.

    3x3 kernels are left alone by default: oneDNN's own bf16 backward is as fast for them.
    """
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d) and _eligible(child, min_kernel):
                new = DepthwiseConv2d(child.in_channels, child.out_channels, child.kernel_size,  # type: ignore[arg-type]
                                      child.stride, child.padding, child.dilation,  # type: ignore[arg-type]
                                      child.groups, child.bias is not None, device="meta")
                new.weight, new.bias = child.weight, child.bias
                setattr(parent, name, new)
    return module


# torch 2.14.1 (oneDNN 3.12) on CPUs with native bf16 (seen on an Intel Xeon with AMX-BF16 and AVX-512
# BF16): training a 1x1 convolution from 3072 or 4096 channels to 5, 8 or 10-13 under bf16 autocast
# writes out of bounds, and glibc aborts the process during backward ("corrupted size vs. prev_size").
# Plain-PyTorch repro: nn.Conv2d(4096, 11, 1), input (2, 4096, 2, 2), five forward/backward passes under
# torch.autocast("cpu", dtype=torch.bfloat16). 4096 -> 16, 19, 21 and 512/1024/2048 -> 11 ran clean.
# The rule covers the untested shapes between those: more than 2048 in, fewer than 16 out. FCN-AlexNet/VGG
# score layers (fc7, 4096 channels) and SVM heads on fc7 features have this shape. On CPUs without native
# bf16, torch does not send bf16 convolutions to oneDNN at all, so the defect cannot be reached there.
_DEFECT_MIN_IN, _DEFECT_MAX_OUT = 2049, 15


def bf16_conv_defect(conv: nn.Module) -> bool:
    """Whether ``conv`` has the shape whose oneDNN bf16 training kernel corrupts memory (see above)."""
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.groups == 1
            and conv.in_channels >= _DEFECT_MIN_IN and conv.out_channels <= _DEFECT_MAX_OUT)


class Float32TrainConv2d(nn.Conv2d):
    """``nn.Conv2d`` that runs in fp32 while CPU autocast is on and gradients are needed.

    Its output is then fp32 (callers under autocast mix it with bf16 by type promotion); inference
    and every other path are those of ``nn.Conv2d``. Parameters and state-dict keys are unchanged.
    """

    def forward(self, x: Tensor) -> Tensor:
        if (x.device.type == "cpu" and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
                and (x.requires_grad or self.weight.requires_grad)):
            with torch.autocast("cpu", enabled=False):
                return cast(Tensor, self._conv_forward(x.float(), self.weight, self.bias))
        return super().forward(x)


def guard_bf16_conv_defect(module: nn.Module) -> nn.Module:
    """Turn, in place, every ``nn.Conv2d`` in ``module`` that :func:`bf16_conv_defect` flags into a
    :class:`Float32TrainConv2d` (same object, same parameters); returns ``module``."""
    for conv in module.modules():
        if type(conv) is nn.Conv2d and bf16_conv_defect(conv):
            conv.__class__ = Float32TrainConv2d
    return module
