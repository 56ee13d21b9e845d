"""Export a segmentation model to ONNX (checked with onnxruntime) or TorchScript.

Models make their padding/cropping decisions from the model, not from the input shape, so an
export with dynamic height and width stays correct for every input size the graph receives
(at least ``size_divisor`` pixels per side for models that reflect-pad).
"""
from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["export_onnx", "export_torchscript", "quantize_onnx_int8", "verify_onnx"]


class _Logits(nn.Module):
    """``forward(x) -> logits`` only: the legacy tracer passes every keyword default (``with_aux``) positionally."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(Tensor, self.model(x))


def _eval_copy(model: nn.Module) -> nn.Module:
    """A float32, contiguous, eval-mode copy: exports never see the caller's training state or fast path."""
    model = copy.deepcopy(model).float().eval()
    return _Logits(model.to(memory_format=torch.contiguous_format)).eval()


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    input_size: tuple[int, int] = (512, 512),
    dynamic: bool = True,
    opset: int = 17,
    exporter: str = "auto",
) -> Path:
    """Write ``model`` (eval mode, fp32) to an ONNX file with input ``image`` and output ``logits``.

    ``dynamic`` makes batch, height and width free. ``exporter``: ``"torchscript"`` (fast, any opset),
    ``"dynamo"`` (torch.export based, opset >= 18) or ``"auto"`` (torchscript below opset 18).
    """
    if exporter == "auto":
        exporter = "dynamo" if opset >= 18 else "torchscript"
    if exporter not in ("torchscript", "dynamo"):
        raise ValueError(f"exporter must be 'auto', 'torchscript' or 'dynamo', got {exporter!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _eval_copy(model)
    x = torch.randn(1, 3, *input_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter
        if exporter == "torchscript":
            axes = {0: "batch", 2: "height", 3: "width"}
            dynamic_axes = {"image": axes, "logits": axes} if dynamic else None
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset,
                              dynamic_axes=dynamic_axes, input_names=["image"], output_names=["logits"])
        else:
            dims = torch.export.Dim
            shapes = {"x": {0: dims("batch", max=1024), 2: dims("height", min=2, max=16384),
                            3: dims("width", min=2, max=16384)}} if dynamic else None
            program = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset, dynamic_shapes=shapes,
                                        external_data=False, verbose=False, input_names=["image"],
                                        output_names=["logits"])
            assert program is not None  # dynamo=True returns the program
            program.save(str(path))
    return path


def verify_onnx(model: nn.Module, path: str | os.PathLike[str], x: Tensor) -> float:
    """Max absolute difference between onnxruntime on ``path`` and ``model`` (eval, fp32) on input ``x``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.detach().float().cpu().numpy()})
    with torch.no_grad():
        want = _eval_copy(model)(x.float().cpu()).numpy()
    if got.shape != want.shape:
        raise AssertionError(f"ONNX output shape {got.shape} differs from the model's {want.shape}")
    return float(np.abs(got - want).max())


def export_torchscript(
    model: nn.Module, path: str | os.PathLike[str], *, input_size: tuple[int, int] = (512, 512)
) -> Path:
    """Trace ``model`` (eval, fp32) to a TorchScript file loadable with ``torch.jit.load`` (any input size)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _eval_copy(model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, torch.randn(1, 3, *input_size),  # type: ignore[no-untyped-call]
                                 check_trace=False)
        traced.save(str(path))
    return path


def quantize_onnx_int8(fp32_path: str | os.PathLike[str], out_path: str | os.PathLike[str],
                       calibration: list[np.ndarray], *, per_channel: bool = True,
                       float_ends: bool = True) -> Path:
    """ONNX Runtime static int8 quantization of an exported model (QDQ format, int8 weights per channel,
    uint8 activations calibrated on ``calibration``: normalized float images (1, 3, H, W), e.g. training
    images). Returns the int8 model's path.

    ``float_ends`` keeps the first and the last convolution (stem and classifier) in float: on the CamVid
    DeepLabV3+ run the all-int8 model lost 1.1 mIoU and this one 0.01, at about the same latency
    (benchmarks/int8.py)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    if not calibration:
        raise ValueError("int8 quantization needs calibration images")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self._items, None)
            return None if item is None else {"image": item.astype(np.float32)}

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    convs = [node.name for node in onnx.load(str(fp32_path), load_external_data=False).graph.node
             if node.op_type == "Conv"]
    keep = [convs[0], convs[-1]] if float_ends and len(convs) > 2 else []
    quantize_static(str(fp32_path), str(out), _Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=keep)
    return out
