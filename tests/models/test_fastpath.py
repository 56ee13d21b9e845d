"""Fast path selection and its effect on outputs."""
from __future__ import annotations

import pytest
import torch

from structseg.models import build_model
from structseg.models import fastpath as fp
from structseg.models.fastpath import FastPath, select_fast_path


@pytest.mark.parametrize("native_bf16", [True, False])
def test_cpu_selection_follows_bf16_support(monkeypatch: pytest.MonkeyPatch, native_bf16: bool) -> None:
    monkeypatch.setattr(fp, "cpu_has_native_bf16", lambda: native_bf16)
    path = select_fast_path("cpu")
    assert path.channels_last
    assert path.autocast_dtype == (torch.bfloat16 if native_bf16 else None)
    assert select_fast_path("cpu", enabled=False) == FastPath() == FastPath(False, None)


@pytest.mark.parametrize(("bf16", "major", "dtype", "channels_last"),
                         [(True, 8, torch.bfloat16, True), (False, 7, torch.float16, True),
                          (False, 6, torch.float16, False)])
def test_cuda_selection(monkeypatch: pytest.MonkeyPatch, bf16: bool, major: int, dtype: torch.dtype,
                        channels_last: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (major, 0))
    path = select_fast_path("cuda:0")
    assert (path.autocast_dtype, path.channels_last) == (dtype, channels_last)
    assert path.needs_grad_scaler == (dtype == torch.float16)


def test_cpu_bf16_detection_reads_torch() -> None:
    assert fp.cpu_has_native_bf16() == bool(
        torch.cpu._is_avx512_bf16_supported() or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def test_channels_last_keeps_fp32_results() -> None:
    torch.manual_seed(0)
    model = build_model("deeplabv3plus", 3, backbone="mobilenet_v3_large").eval()
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        want = model(x)
        path = FastPath(channels_last=True)
        path.prepare(model)
        assert model.backbone.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
        got = model(path.prepare_input(x))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert path.describe() == "channels_last"


def test_bf16_autocast_runs_in_bf16_and_stays_close() -> None:
    torch.manual_seed(0)
    model = build_model("unet", 3, base_channels=8).eval()
    x = torch.randn(2, 3, 48, 64)
    path = FastPath(channels_last=True, autocast_dtype=torch.bfloat16)
    with torch.no_grad():
        want = model(x)
        path.prepare(model)
        with path.autocast("cpu"):
            got = model(path.prepare_input(x))
    assert got.dtype == torch.bfloat16
    error = (got.float() - want).abs().max() / want.abs().max()
    assert error < 0.05  # bf16 keeps 8 bits of mantissa; the benchmark reports the measured effect
    assert path.describe() == "channels_last+bf16"


@pytest.mark.parametrize(("native_bf16", "backbone", "channels_last"),
                         [(False, "alexnet", False), (False, "vgg16_bn", False), (False, "resnet18", True),
                          (False, None, True), (True, "alexnet", True), (True, "vgg16", True)])
def test_cpu_memory_format_follows_backbone_without_bf16(monkeypatch: pytest.MonkeyPatch, native_bf16: bool,
                                                         backbone: str | None, channels_last: bool) -> None:
    monkeypatch.setattr(fp, "cpu_has_native_bf16", lambda: native_bf16)
    path = select_fast_path("cpu", backbone=backbone)
    assert path.channels_last == channels_last and path.fold_batchnorm


def test_engine_fast_path_uses_the_model_default_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    from structseg.engine.build import fast_path_for
    from structseg.engine.config import load_config

    monkeypatch.setattr(fp, "cpu_has_native_bf16", lambda: False)
    cpu = torch.device("cpu")
    assert not fast_path_for(load_config(None, ["model.name=fcn8s"]), cpu).channels_last  # VGG-16 by default
    assert fast_path_for(load_config(None, ["model.name=fcn8s", "model.backbone=resnet18"]), cpu).channels_last
    off = fast_path_for(load_config(None, ["model.name=fcn8s", "model.fast_path=off"]), cpu)
    assert off == FastPath()
