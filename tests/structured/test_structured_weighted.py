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
    plain = float(head.structured_hinge_loss(features, truth).detach())
    head.class_weights = torch.tensor([1.0, 1.0, 10.0])
    weighted = float(head.structured_hinge_loss(features, truth).detach())
    assert weighted > plain  # Delta counts each missed class-2 node ten times


@pytest.mark.parametrize("class_weights", [None, [1.0, 3.0, 0.5]])
def test_the_structured_hamming_loss_costs_margin_per_wrong_node(class_weights: list[float] | None) -> None:
    # without pairwise terms the structured hinge is the per-node hinge max_k (s_k + margin w_y [k != y]) - s_y,
    # summed over the nodes and divided by their (weighted) count
    torch.manual_seed(3)
    features = torch.randn(2, 4, 3, 4, dtype=torch.float64)
    truth = torch.randint(0, 3, (2, 3, 4))
    head = StructuredSVMHead(4, 3, solver="icm", margin=2.5).double()
    w = torch.ones(3, dtype=torch.float64) if class_weights is None else torch.tensor(class_weights).double()
    if class_weights is not None:
        head.class_weights = w
    with torch.no_grad():
        head.unary.weight.mul_(3.0)
        scores = head(features).flatten(2).transpose(1, 2)  # (N, nodes, K)
        y = truth.flatten(1)
        cost = 2.5 * w[y].unsqueeze(-1) * (torch.arange(3) != y.unsqueeze(-1))
        per_node = (scores + cost).amax(-1) - scores.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        expected = (per_node.sum(1) / w[y].sum(1)).mean()
        assert float(head.structured_hinge_loss(features, truth)) == pytest.approx(float(expected))


def test_the_structured_margin_must_be_positive() -> None:
    from structseg.errors import ConfigError

    with pytest.raises(ConfigError, match="model.structured.margin must be > 0, got 0"):
        StructuredSVMHead(4, 3, margin=0.0)
