"""Class-weighted SVM losses: the per-pixel hinge and the structured Hamming loss weight each node by its true
class (the data's class weights); without weights they are the unweighted forms."""
from __future__ import annotations

import pytest
import torch

from structseg.structured.models import LinearSVMHead, StructuredSVMHead, multiclass_hinge_loss


def test_weighted_hinge_is_the_weighted_mean_of_the_per_pixel_hinges() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 4, 5), generator=g)
    target[0, 0, 0] = 255
    w = torch.tensor([1.0, 4.0, 0.5], dtype=torch.float64)
    per_pixel = multiclass_hinge_loss(scores, target, reduction="none")
    valid = target != 255
    weights = w[target.clamp(max=2)] * valid
    expected = (per_pixel * weights).sum() / weights.sum()
    assert float(multiclass_hinge_loss(scores, target, class_weights=w)) == pytest.approx(float(expected))
    assert float(multiclass_hinge_loss(scores, target, class_weights=torch.ones(3, dtype=torch.float64))) == (
        pytest.approx(float(multiclass_hinge_loss(scores, target))))


def test_weights_are_loss_settings_not_model_weights() -> None:
    head = LinearSVMHead(4, 3, class_weights=torch.tensor([1.0, 2.0, 3.0]))
    assert "class_weights" not in head.state_dict()
    ssvm = StructuredSVMHead(4, 3, class_weights=torch.tensor([1.0, 2.0, 3.0]))
    assert "class_weights" not in ssvm.state_dict()
    plain = StructuredSVMHead(4, 3)
    plain.load_state_dict(ssvm.state_dict())  # a weighted run's checkpoint loads into an unweighted head


def test_weighted_structured_hinge_raises_the_cost_of_missing_a_weighted_class() -> None:
    torch.manual_seed(0)
    features = torch.randn(1, 4, 3, 3)
    truth = torch.tensor([[[0, 0, 1], [0, 1, 1], [2, 2, 2]]])
    head = StructuredSVMHead(4, 3, solver="milp", loss_normalize=False)
    plain = float(head.structured_hinge_loss(features, truth))
    head.class_weights = torch.tensor([1.0, 1.0, 10.0])
    weighted = float(head.structured_hinge_loss(features, truth))
    assert weighted > plain  # Delta counts each missed class-2 node ten times
