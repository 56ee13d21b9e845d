"""build_model / list_models: names, defaults, and clear errors."""
from __future__ import annotations

import pytest
import torch

from structseg.errors import ConfigError
from structseg.models import SegmentationModel, build_model, list_models, model_spec
from structseg.models import weights as weights_mod


def test_registry_has_the_documented_models() -> None:
    assert {"fcn32s", "fcn16s", "fcn8s", "fcn", "unet", "unet_resnet", "deeplabv3", "deeplabv3plus"} <= set(
        list_models())


def test_defaults_are_random_weights_and_documented_backbones(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("weights=None must never download")

    monkeypatch.setattr(weights_mod, "_download", no_download)
    with torch.device("meta"):
        for name in list_models():
            model = build_model(name, 4)
            assert isinstance(model, SegmentationModel)
            spec = model_spec(name)
            assert getattr(model.backbone, "name", None) == (spec.default_backbone or "unet_encoder")
            assert model.aux_classifier is None
        assert build_model("deeplabv3", 4).backbone.output_stride == 16
        assert build_model("fcn", 4).backbone.output_stride == 8  # torchvision's fcn_resnet50 setting
        assert build_model("fcn", 4, backbone="mobilenet_v3_large").backbone.output_stride == 16


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"name": "segnet"}, ["'segnet'", "deeplabv3plus", "unet_resnet"]),
        ({"name": "deeplabv3", "backbone": "vgg16"}, ["'vgg16'", "resnet18", "mobilenet_v3_large"]),
        ({"name": "deeplabv3", "output_stride": 32}, ["output_stride=32", "valid: 16, 8"]),
        ({"name": "deeplabv3plus", "backbone": "mobilenet_v3_large", "output_stride": 8}, ["valid: 16"]),
        ({"name": "fcn8s", "backbone": "resnet18", "output_stride": 8}, ["valid: 32"]),
        ({"name": "unet", "weights": "imagenet"}, ["own encoder", "unet_resnet"]),
        ({"name": "unet", "base_chanels": 8}, ["base_chanels", "base_channels"]),
        ({"name": "deeplabv3", "separable": True}, ["separable", "atrous_rates"]),
        ({"name": "unet", "pad_mode": "mirror"}, ["pad_mode", "'mirror'"]),
        ({"name": "unet", "num_classes": 0}, ["num_classes", "0"]),
        ({"name": "unet", "base_channels": "16"}, ["base_channels='16'", "int"]),
        ({"name": "unet", "base_channels": True}, ["base_channels=True", "int"]),
        ({"name": "deeplabv3", "atrous_rates": [6, "12", 18]}, ["atrous_rates", "Sequence[int]"]),
        ({"name": "deeplabv3", "atrous_rates": 12}, ["atrous_rates=12"]),
        ({"name": "fcn8s", "fc_channels": 1.5}, ["fc_channels=1.5", "int"]),
        ({"name": "fcn8s", "learnable_upsample": "yes"}, ["learnable_upsample='yes'", "bool"]),
    ],
)
def test_bad_requests_are_config_errors_naming_the_choices(kwargs: dict, fragments: list[str]) -> None:
    kwargs = {"num_classes": 3, **kwargs}
    with pytest.raises(ConfigError) as info, torch.device("meta"):
        build_model(kwargs.pop("name"), kwargs.pop("num_classes"), **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "constant"])
def test_padding_is_cropped_away(mode: str) -> None:
    """The logits of a padded input are those of the explicitly padded image, cropped to the input."""
    model = build_model("unet", 2, base_channels=4, pad_mode=mode).eval()
    x = torch.randn(1, 3, 21, 30)
    padded = torch.nn.functional.pad(x, (0, 2, 0, 11), mode=mode)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(padded)[..., :21, :30])
    with torch.no_grad():
        assert model(torch.randn(1, 3, 5, 7)).shape == (1, 2, 5, 7)  # smaller than the divisor: still works


def test_option_values_from_yaml_lists_are_accepted() -> None:
    with torch.device("meta"):
        model = build_model("deeplabv3", 3, backbone="resnet18", atrous_rates=[6, 12, 18])
    rates = {m.dilation[0] for m in model.modules() if isinstance(m, torch.nn.Conv2d)}
    assert {6, 12, 18} <= rates
