"""build_loss: specs, defaults, and ConfigError / DataError on bad configuration or input."""
from __future__ import annotations

import pytest
import torch

from structseg.errors import ConfigError, DataError
from structseg.losses import (
    CrossEntropyLoss,
    FocalLoss,
    WeightedSumLoss,
    build_loss,
    list_losses,
    loss_params,
)

K = 3


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, K, 4, 4, generator=g), torch.randint(0, K, (2, 4, 4), generator=g)


def test_list_losses():
    assert set(list_losses()) == {"cross_entropy", "focal", "dice", "soft_iou", "lovasz", "ohem", "kl", "mse"}


@pytest.mark.parametrize("name", ["cross_entropy", "focal", "dice", "soft_iou", "lovasz", "ohem", "kl", "mse"])
def test_every_name_builds_and_runs(name):
    logits, target = _batch()
    loss = build_loss(name, num_classes=K, ignore_index=255, class_weights=[1.0, 2.0, 0.5])
    assert loss.class_weights.tolist() == [1.0, 2.0, 0.5]
    value = loss(logits, target)
    assert value.dim() == 0 and torch.isfinite(value) and float(value) > 0


def test_focal_default_gamma_is_two_not_zero():
    assert loss_params("focal")["gamma"] == 2.0
    focal = build_loss("focal", num_classes=K)
    assert isinstance(focal, FocalLoss) and focal.gamma == 2.0
    logits, target = _batch(1)
    assert float(focal(logits, target)) < float(CrossEntropyLoss(K)(logits, target))


def test_dict_spec_sets_params_and_weight():
    loss = build_loss({"name": "focal", "gamma": 1, "alpha": [0.2, 0.3, 0.5]}, num_classes=K)
    assert isinstance(loss, FocalLoss) and loss.gamma == 1.0 and loss.alpha.tolist() == pytest.approx([0.2, 0.3, 0.5])
    scaled = build_loss({"name": "cross_entropy", "weight": 0.25}, num_classes=K)
    assert isinstance(scaled, WeightedSumLoss)
    logits, target = _batch(2)
    assert float(scaled(logits, target)) == pytest.approx(0.25 * float(CrossEntropyLoss(K)(logits, target)))


def test_part_class_weights_override_and_disable():
    loss = build_loss(
        [{"name": "cross_entropy"}, {"name": "dice", "class_weights": None},
         {"name": "lovasz", "class_weights": [3, 2, 1]}],
        num_classes=K, class_weights=[1.0, 1.0, 4.0],
    )
    ce, dice, lovasz = loss.losses
    assert ce.class_weights.tolist() == [1.0, 1.0, 4.0]
    assert dice.class_weights is None
    assert lovasz.class_weights.tolist() == [3.0, 2.0, 1.0]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("focall", r"unknown loss 'focall'; valid losses: cross_entropy, dice, focal, kl, lovasz, mse, ohem, soft_iou"),
        ({"name": "focal", "gama": 2}, r"unknown parameter\(s\) 'gama'; valid parameters: alpha, gamma"),
        ({"name": "cross_entropy", "ignore_index": 3}, r"'ignore_index'; valid parameters: label_smoothing"),
        ({"name": "focal", "gamma": "2"}, r"focal: gamma must be a finite number, got '2' \(str\)"),
        ({"name": "focal", "gamma": -1}, r"gamma must be >= 0.0"),
        ({"name": "focal", "alpha": [0.5, 0.5]}, r"alpha has 2 entries but num_classes is 3"),
        ({"name": "dice", "per_image": "yes"}, r"per_image must be true or false"),
        ({"name": "lovasz", "classes": "some"}, r"classes must be one of 'present', 'all', got 'some'"),
        ({"name": "cross_entropy", "label_smoothing": 1.0}, r"label_smoothing must be < 1.0"),
        ({"name": "ohem", "min_kept": 1.5}, r"min_kept must be an int"),
        ({"name": "ohem", "thresh": 0}, r"thresh must be > 0.0"),
        ({"name": "kl", "temperature": 0}, r"temperature must be > 0.0"),
        ({"name": "dice", "weight": "big"}, r"weight must be a finite number"),
        ({"name": "dice", "class_weights": [1, 2]}, r"class_weights has 2 entries"),
        ({"gamma": 2}, r"has no 'name'"),
        ({"name": 3}, r"unknown loss 3"),
        ([], r"non-empty list"),
        (5, r"got 5"),
    ],
)
def test_bad_specs_raise_config_error(spec, message):
    with pytest.raises(ConfigError, match=message):
        build_loss(spec, num_classes=K)


def test_bad_global_arguments():
    with pytest.raises(ConfigError, match="num_classes"):
        build_loss("dice", num_classes=0)
    with pytest.raises(ConfigError, match="class_weights has 2 entries"):
        build_loss("dice", num_classes=K, class_weights=[1, 2])
    with pytest.raises(ConfigError, match=r"class_weights\[1\] must be >= 0.0"):
        build_loss("dice", num_classes=K, class_weights=[1, -2, 1])
    with pytest.raises(ConfigError, match="ignore_index 1 is a valid class id"):
        build_loss("dice", num_classes=K, ignore_index=1)


def test_bad_inputs_raise_data_error():
    loss = build_loss("cross_entropy", num_classes=K, ignore_index=255)
    logits, target = _batch(3)
    bad = target.clone()
    bad[0, 0, 0] = 7
    with pytest.raises(DataError, match=r"target labels \[7\]"):
        loss(logits, bad)
    with pytest.raises(DataError, match="does not fit logits shape"):
        loss(logits, target[:, :3])
    with pytest.raises(DataError, match="num_classes=3"):
        loss(logits[:, :2], target)
    with pytest.raises(DataError, match="integer class ids"):
        loss(logits, target.float())
    kl = build_loss("kl", num_classes=K)
    with pytest.raises(DataError, match="sum to 1"):
        kl(logits, torch.full_like(logits, 0.5))
    with pytest.raises(DataError, match="must equal logits shape"):
        kl(logits, torch.softmax(logits, 1)[:, :, :2])


def test_class_weights_follow_the_module_device():
    loss = build_loss(["dice", "focal"], num_classes=K, class_weights=[1, 2, 3]).to(torch.float64)
    assert loss.losses[0].class_weights.dtype == torch.float64
    assert len(list(loss.buffers())) >= 2
