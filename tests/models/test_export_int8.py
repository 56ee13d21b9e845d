"""ONNX Runtime static int8 quantization of an exported model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from structseg.models import build_model
from structseg.models.export import export_onnx, quantize_onnx_int8


def quantized_unet(tmp_path: Path, images: int, **options: bool) -> tuple[Path, Path, list[np.ndarray]]:
    """A small U-Net exported to ONNX (32x48) and quantized on ``images`` random calibration inputs."""
    pytest.importorskip("onnxruntime.quantization")
    torch.manual_seed(0)
    model = build_model("unet", 3, base_channels=8).eval()
    fp32 = export_onnx(model, tmp_path / "m.onnx", input_size=(32, 48), dynamic=False)
    rng = np.random.default_rng(0)
    calibration = [rng.standard_normal((1, 3, 32, 48)).astype(np.float32) for _ in range(images)]
    return fp32, quantize_onnx_int8(fp32, tmp_path / "m.int8.onnx", calibration, **options), calibration


def test_int8_model_runs_and_mostly_agrees_with_fp32(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    fp32, int8, calibration = quantized_unet(tmp_path, 8)
    x = calibration[0]
    want = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    got = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    assert got.shape == want.shape == (1, 3, 32, 48)
    scale = np.abs(want).max()
    assert np.abs(got - want).mean() < 0.1 * scale
    with pytest.raises(ValueError, match="calibration"):
        quantize_onnx_int8(fp32, tmp_path / "x.onnx", [])


@pytest.mark.parametrize("float_ends", [True, False])
def test_float_ends_keeps_stem_and_classifier_in_float(tmp_path: Path, float_ends: bool) -> None:
    onnx = pytest.importorskip("onnx")
    _, int8, _ = quantized_unet(tmp_path, 4, float_ends=float_ends)
    graph = onnx.load(str(int8)).graph
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    quantized = [node.input[1] in dequantized for node in convs]
    assert quantized[1:-1] == [True] * (len(convs) - 2)
    assert quantized[0] == quantized[-1] == (not float_ends)
