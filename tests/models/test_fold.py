"""BatchNorm folding: same outputs, fewer modules, and no fold where the data flow forbids it."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from structseg.models import build_model, fold_batchnorm
from structseg.models.fastpath import FastPath


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so that folding has something to fold."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model


def _count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class SecondModuleReader(Pair):
    """The conv output goes to the BN and to another module: folding would change the other one."""

    def __init__(self) -> None:
        super().__init__()
        self.other = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + self.other(y)


class FunctionalReader(Pair):
    """The conv output is also read by a functional op, which hooks cannot see."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) * 2 + y


class SharedConv(Pair):
    """One conv called twice, once into the BN and once not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + self.conv(x)


class RegisteredOutOfOrder(nn.Module):
    """The BN registered right after conv_a reads conv_b: pairs must follow the data flow."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.conv_b = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv_b(self.conv_a(x)))


@pytest.mark.parametrize(("cls", "folds"), [(Pair, 1), (SecondModuleReader, 0), (FunctionalReader, 0),
                                            (SharedConv, 0), (RegisteredOutOfOrder, 1)])
def test_fold_only_where_the_data_flow_allows(cls: type[nn.Module], folds: int) -> None:
    torch.manual_seed(0)
    model = _randomise_bn(cls()).eval()
    x = torch.randn(2, 3, 9, 11)
    folded, count = fold_batchnorm(model, x[:1])
    assert count == folds
    assert _count_bn(folded) == _count_bn(model) - folds
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)
    if cls is RegisteredOutOfOrder:
        assert torch.equal(folded.conv_a.weight, model.conv_a.weight)
        assert not torch.equal(folded.conv_b.weight, model.conv_b.weight)


def test_bn_without_running_stats_is_not_folded() -> None:
    model = Pair()
    model.bn = nn.BatchNorm2d(4, track_running_stats=False)
    folded, count = fold_batchnorm(model.eval(), torch.randn(2, 3, 8, 8))
    assert count == 0 and isinstance(folded.bn, nn.BatchNorm2d)


@pytest.mark.parametrize(("name", "options"), [
    ("deeplabv3plus", {"backbone": "resnet18"}),
    ("deeplabv3plus", {"backbone": "mobilenet_v3_large"}),
    ("unet", {"base_channels": 8}),
    ("fcn8s", {"backbone": "alexnet", "fc_channels": 32}),
])
def test_models_fold_every_batchnorm_and_keep_their_outputs(name: str, options: dict) -> None:
    torch.manual_seed(0)
    model = _randomise_bn(build_model(name, 5, **options)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded, count = fold_batchnorm(model, torch.randn(1, 3, 64, 64))
    assert count == _count_bn(model)  # every BN here follows a conv (AlexNet has none)
    assert _count_bn(folded) == 0
    x = torch.randn(2, 3, 67, 93)
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(folded(x), want, atol=1e-4 * want.abs().max().item(), rtol=1e-4)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # original untouched


def test_fast_path_folds_only_for_inference() -> None:
    torch.manual_seed(0)
    model = _randomise_bn(build_model("deeplabv3plus", 3, backbone="mobilenet_v3_large"))
    path = FastPath(channels_last=True, fold_batchnorm=True)
    infer = path.prepare_inference(model)
    assert _count_bn(infer) == 0 and _count_bn(model) > 0 and not infer.training
    assert path.describe() == "channels_last+foldbn"
    x = torch.randn(1, 3, 48, 64)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(infer(path.prepare_input(x)), model(x), atol=1e-4, rtol=1e-4)
    assert _count_bn(FastPath(channels_last=True).prepare_inference(model)) == _count_bn(model)
