"""The guard against oneDNN's broken bf16 training kernel for wide-in, narrow-out 1x1 convolutions."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from structseg.models import build_model
from structseg.models.export import export_torchscript
from structseg.models.fastpath import FastPath
from structseg.models.ops import Float32TrainConv2d, bf16_conv_defect, guard_bf16_conv_defect
from structseg.structured.models import LinearSVMHead, StructuredSVMHead

HELPER = Path(__file__).with_name("_train_every_model.py")


@pytest.mark.parametrize(("conv", "flagged"), [
    (nn.Conv2d(4096, 11, 1), True),
    (nn.Conv2d(3072, 5, 1), True),
    (nn.Conv2d(4096, 13, 1), True),
    (nn.Conv2d(4096, 16, 1), False),
    (nn.Conv2d(4096, 21, 1), False),
    (nn.Conv2d(2048, 11, 1), False),
    (nn.Conv2d(4096, 11, 3), False),
    (nn.Conv2d(4096, 8, 1, groups=4), False),
    (nn.Linear(4096, 11), False),
])
def test_defect_rule_follows_the_bisected_shapes(conv: nn.Module, flagged: bool) -> None:
    assert bf16_conv_defect(conv) is flagged


def test_build_model_guards_only_the_fc7_score_layer() -> None:
    fcn = build_model("fcn8s", 11, backbone="alexnet")
    guarded = {n for n, m in fcn.named_modules() if isinstance(m, Float32TrainConv2d)}
    assert guarded == {"score_final"}
    assert type(fcn.score_pool4) is nn.Conv2d and type(fcn.score_pool3) is nn.Conv2d
    narrow = build_model("fcn8s", 11, backbone="alexnet", fc_channels=64)
    assert not any(isinstance(m, Float32TrainConv2d) for m in narrow.modules())
    wide_classes = build_model("fcn32s", 21, backbone="alexnet")
    assert not any(isinstance(m, Float32TrainConv2d) for m in wide_classes.modules())


def test_svm_heads_on_fc7_features_are_guarded() -> None:
    assert isinstance(LinearSVMHead(4096, 11).classifier, Float32TrainConv2d)
    assert isinstance(StructuredSVMHead(4096, 11).unary, Float32TrainConv2d)
    assert type(LinearSVMHead(512, 11).classifier) is nn.Conv2d


def test_fast_path_prepare_guards_models_built_elsewhere() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4096, 1), nn.Conv2d(4096, 5, 1))
    FastPath().prepare(model)
    assert type(model[1]) is nn.Conv2d  # fp32 path: nothing to avoid
    FastPath(autocast_dtype=torch.bfloat16).prepare(model)
    assert type(model[0]) is nn.Conv2d and isinstance(model[1], Float32TrainConv2d)


def test_guarded_conv_trains_in_fp32_and_the_rest_stays_bf16() -> None:
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Conv2d(8, 4096, 1), nn.ReLU(), nn.Conv2d(4096, 11, 1))
    model = guard_bf16_conv_defect(nn.Sequential(*[m for m in reference]))
    assert list(model.state_dict()) == list(reference.state_dict())
    x = torch.randn(2, 8, 3, 3)
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name in ("0", "2"):
        model.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: seen.__setitem__(name, (i[0].detach(), o.detach())))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert {name: o.dtype for name, (_, o) in seen.items()} == {"0": torch.bfloat16, "2": torch.float32}
    hidden = seen["2"][0]
    assert hidden.dtype == torch.bfloat16
    expected = nn.functional.conv2d(hidden.float(), model[2].weight, model[2].bias)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert model[2].weight.grad is not None and model[2].weight.grad.dtype == torch.float32
    assert model[0].weight.grad is not None and torch.isfinite(model[0].weight.grad).all()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16  # inference keeps bf16 (the defect is in training)
    torch.testing.assert_close(model(x), reference(x))  # outside autocast: a plain Conv2d


def test_guarded_model_still_traces(tmp_path: Path) -> None:
    model = build_model("fcn32s", 11, backbone="alexnet").eval()
    path = export_torchscript(model, tmp_path / "m.pt", input_size=(64, 64))
    loaded = torch.jit.load(str(path))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["auto", "bf16"])
def test_every_model_trains_on_its_fast_path_with_a_clean_exit(mode: str) -> None:
    """A kernel that writes out of bounds aborts the process: only a subprocess can see that."""
    from _train_every_model import HEADS, plan

    run = subprocess.run([sys.executable, str(HELPER), mode], capture_output=True, text=True, timeout=600,
                         cwd=HELPER.parent)
    last = (run.stdout.strip().splitlines() or ["(nothing)"])[-1]
    assert run.returncode == 0, f"exit {run.returncode} during {last!r}:\n{run.stderr[-2000:]}"
    done = {line.split()[1] for line in run.stdout.splitlines() if line.startswith("ok ")}
    assert done == {f"{name}-{backbone}" for name, backbone in plan(mode)} | set(HEADS)
    assert "fcn8s-alexnet" in done
