"""The fast path: channels_last memory format, reduced-precision autocast and, for inference,
BatchNorm folded into the convolutions, chosen per device.

On CPUs, oneDNN convolutions mostly run faster on channels_last tensors (not those of AlexNet and
VGG without native bf16, see ``select_fast_path``), and bfloat16 autocast pays off only where the CPU
computes bf16 natively (AVX512-BF16 or AMX); elsewhere it emulates and is slower, so it stays off.
On CUDA, bf16 where supported, else fp16 (which wants a GradScaler in training:
``FastPath.needs_grad_scaler``). ``select_fast_path(device, enabled=False)`` is the off switch.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["FastPath", "select_fast_path", "cpu_has_native_bf16"]


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 instructions (AVX512-BF16 or AMX) that oneDNN uses."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


@dataclass(frozen=True)
class FastPath:
    """A memory format and autocast dtype to run a model with; ``FastPath()`` is the plain fp32 path."""

    channels_last: bool = False
    autocast_dtype: torch.dtype | None = None
    fold_batchnorm: bool = False

    @property
    def needs_grad_scaler(self) -> bool:
        """fp16 training needs loss scaling; bf16 and fp32 do not."""
        return self.autocast_dtype == torch.float16

    def prepare(self, model: nn.Module) -> nn.Module:
        """Convert ``model`` in place to the memory format; returns it. Convolutions of the shape whose
        oneDNN bf16 kernel is broken train in fp32 (``structseg.models.ops.bf16_conv_defect``)."""
        if self.autocast_dtype is not None:
            from structseg.models.ops import guard_bf16_conv_defect

            guard_bf16_conv_defect(model)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def prepare_inference(self, model: nn.Module, probe: torch.Tensor | None = None) -> nn.Module:
        """``model`` made ready for inference: when this path folds, an eval-mode copy with BatchNorm
        folded into the convolutions (checked on ``probe``, by default a random 1x3x64x64 batch on the
        model's device; ``model`` itself stays trainable), then put in the memory format."""
        if self.fold_batchnorm:
            from structseg.models.fold import fold_batchnorm

            if probe is None:
                device = next((p.device for p in model.parameters()), torch.device("cpu"))
                probe = torch.randn(1, 3, 64, 64, device=device)
            model, _ = fold_batchnorm(model, probe)
        return self.prepare(model)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Put a batch (N, C, H, W) into the memory format (the model's first conv would do it otherwise)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self, device: torch.device | str) -> contextlib.AbstractContextManager[None]:
        """Autocast context for forward passes (and the loss), or a no-op on the fp32 path."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=self.autocast_dtype)

    def describe(self) -> str:
        """Short text for logs, e.g. ``channels_last+bf16``."""
        parts = ["channels_last"] if self.channels_last else []
        if self.autocast_dtype is not None:
            parts.append({torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.autocast_dtype,
                                                                             str(self.autocast_dtype)))
        if self.fold_batchnorm:
            parts.append("foldbn")
        return "+".join(parts) or "fp32"


# Backbones whose convolutions run slower channels_last than contiguous on CPUs without native bf16: their
# 4096-channel fc6/fc7 convolutions dominate (benchmarks/model_speed.py on an AVX2 CPU, 2 threads, before this
# rule: FCN-8s AlexNet training 0.80x, inference 0.71x at batch 1 and 0.54x at batch 8; FCN-8s VGG-16 training
# 0.81x; benchmarks/results/model_speed_avx2.json holds the rerun with the rule, about 1.0x).
_CONTIGUOUS_ON_PLAIN_CPU = ("alexnet", "vgg")


def select_fast_path(device: torch.device | str, enabled: bool = True, *, backbone: str | None = None) -> FastPath:
    """The fastest safe path for ``device`` (and ``backbone``, where that matters); ``enabled=False``
    gives plain fp32 contiguous."""
    device = torch.device(device)
    if not enabled:
        return FastPath()
    if device.type == "cpu":
        native = cpu_has_native_bf16()
        plain_is_faster = not native and (backbone or "").startswith(_CONTIGUOUS_ON_PLAIN_CPU)
        return FastPath(channels_last=not plain_is_faster, autocast_dtype=torch.bfloat16 if native else None,
                        fold_batchnorm=True)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, _ = torch.cuda.get_device_capability(index)
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return FastPath(channels_last=major >= 7, autocast_dtype=dtype, fold_batchnorm=True)
    return FastPath()

