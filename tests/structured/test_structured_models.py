"""SVM heads: hinge losses against independent oracles, gradients, ignore handling, the wrapper."""
from __future__ import annotations

import pytest
import torch
from _structured_oracle import brute_force, hamming_extra
from torch import nn

from structseg.graph import downsample_labels
from structseg.structured.models import (
    LinearSVMHead,
    StructuredSegmenter,
    StructuredSVMHead,
    multiclass_hinge_loss,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TinyBase(nn.Module):
    """Stands in for a SegmentationModel: forward_features(x)["features"] at 1/4 resolution."""

    def __init__(self, channels: int = 6) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, channels, 3, stride=4, padding=1)
        self.feature_channels = channels

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": x, "features": torch.tanh(self.backbone(x))}


def test_multiclass_hinge_matches_torchmetrics() -> None:
    tm = pytest.importorskip("torchmetrics.functional.classification")
    torch.manual_seed(0)
    scores = torch.rand(2, 5, 3, 4)  # in [0, 1]: torchmetrics uses them as given
    target = torch.randint(0, 5, (2, 3, 4))
    target[0, 0, :2] = 255
    ours = multiclass_hinge_loss(scores, target, ignore_index=255)
    flat = scores.movedim(1, -1).reshape(-1, 5)
    ref = tm.multiclass_hinge_loss(flat, target.reshape(-1), num_classes=5, ignore_index=255)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-6)
    per_pixel = multiclass_hinge_loss(scores, target, ignore_index=255, reduction="none")
    assert per_pixel.shape == (2, 3, 4) and (per_pixel[0, 0, :2] == 0).all() and (per_pixel >= 0).all()


def test_downsample_majority_with_ignore() -> None:
    t = torch.tensor([[[1, 1, 2, 2],
                       [1, 0, 2, 255],
                       [255, 255, 3, 3],
                       [255, 0, 3, 0]]])
    out = downsample_labels(t, (2, 2), num_classes=4, ignore_index=255)
    assert out.tolist() == [[[1, 2], [255, 3]]]  # bottom-left: 3 of 4 pixels ignored
    near = downsample_labels(t, (2, 2), num_classes=4, mode="nearest")
    assert near.tolist() == [[[1, 2], [255, 3]]]


def _head(kind: str, c: int = 3, k: int = 3, seed: int = 0, dtype=torch.float64, **kw) -> StructuredSVMHead:
    torch.manual_seed(seed)
    head = StructuredSVMHead(c, k, pairwise=kind, **kw).to(dtype)
    nn.init.normal_(head.pairwise.weight, std=0.8)
    nn.init.normal_(head.pairwise.bias, std=0.3)
    return head


@pytest.mark.parametrize("kind", ["agreement", "full"])
def test_pairwise_is_linear_on_concatenated_features(kind: str) -> None:
    head = _head(kind, c=4, k=3, connectivity=8)
    f = torch.randn(2, 4, 3, 4, dtype=torch.float64)
    unary, pair, edges = head.potentials(f)
    flat = f.flatten(2).transpose(1, 2)
    for e in (0, len(edges) // 2, len(edges) - 1):
        i, j = edges[e]
        ref = head.pairwise(torch.cat([flat[:, i], flat[:, j]], dim=1))
        assert torch.allclose(pair[:, e].reshape(2, -1), ref)
    assert torch.allclose(unary[:, 5], flat[:, 5] @ head.unary.weight[:, :, 0, 0].T + head.unary.bias)


@pytest.mark.parametrize("kind", ["agreement", "full"])
def test_structured_hinge_equals_brute_force(kind: str) -> None:
    head = _head(kind, solver="milp")
    f = torch.randn(1, 3, 2, 3, dtype=torch.float64)
    truth = torch.randint(0, 3, (1, 2, 3))
    problem = head.problems(f)[0]
    y_star = truth.reshape(-1).numpy()
    best, _, _ = brute_force(problem.unary, problem.edges, problem.pairwise, kind, hamming_extra(y_star, 3))
    expected = best - problem.score(y_star)
    loss = head.structured_hinge_loss(f, truth, reduction="sum")
    assert loss.item() * 6 == pytest.approx(expected, abs=1e-8)  # normalized by 6 labelled nodes
    assert loss.item() >= 0
    s = head.score(f, truth)
    assert s.item() == pytest.approx(problem.score(y_star))


def test_hinge_zero_when_truth_wins_by_margin_positive_otherwise() -> None:
    k = 3
    head = StructuredSVMHead(k, k, pairwise="agreement", solver="milp").double()
    truth = torch.tensor([[[0, 1, 2], [2, 1, 0]]])
    f = nn.functional.one_hot(truth, k).movedim(-1, 1).double()
    with torch.no_grad():
        # truth beats others by 1.01 > Delta
        head.unary.weight.copy_(torch.eye(k, dtype=torch.float64)[:, :, None, None] * 1.01)
        head.unary.bias.zero_()
    assert head.structured_hinge_loss(f, truth).item() == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        head.unary.weight.mul_(0.5)  # margin 0.505 < 1: every pixel violates it
    loss = head.structured_hinge_loss(f, truth)
    assert loss.item() == pytest.approx(1 - 0.505, abs=1e-9)
    for solver in ("bp", "expansion", "icm"):
        assert head.structured_hinge_loss(f, truth, solver=solver).item() >= 0


@pytest.mark.parametrize("kind", ["agreement", "full"])
def test_gradcheck_score_and_loss(kind: str) -> None:
    head = _head(kind, c=2, k=3)
    f = torch.randn(1, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[[0, 2], [2, 1]]])
    assert torch.autograd.gradcheck(lambda x: head.score(x, labels), (f,))
    w = head.pairwise.weight
    assert torch.autograd.gradcheck(lambda weight: _score_with(head, f, labels, weight),
                                    (w.detach().clone().requires_grad_(),))
    # the hinge is piecewise linear: with a unique loss-augmented maximiser it is differentiable
    truth = torch.tensor([[[1, 0], [0, 2]]])
    assert torch.autograd.gradcheck(lambda x: head.structured_hinge_loss(x, truth, solver="milp"), (f,), atol=1e-6)


def _score_with(head: StructuredSVMHead, f: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    original = head.pairwise.weight
    try:
        del head.pairwise.weight
        head.pairwise.weight = weight
        return head.score(f, labels)
    finally:
        head.pairwise.weight = original


def test_ignored_pixels_do_not_change_the_loss() -> None:
    head = _head("agreement", c=3, k=3, solver="milp")
    f = torch.randn(1, 3, 3, 3, dtype=torch.float64)
    truth = torch.randint(0, 3, (1, 3, 3))
    truth[0, 1, 1] = 255
    base = head.structured_hinge_loss(f, truth).item()
    g = f.clone()
    g[0, :, 1, 1] += 5.0 * torch.randn(3, dtype=torch.float64)  # only the ignored node's features move
    assert head.structured_hinge_loss(g, truth).item() == pytest.approx(base, abs=1e-9)


def test_segmenter_end_to_end_training_lowers_the_loss() -> None:
    torch.manual_seed(0)
    base = TinyBase(6)
    head = StructuredSVMHead(6, 3, pairwise="agreement", solver="bp")
    model = StructuredSegmenter(base, head)
    x = torch.randn(2, 3, 16, 20)
    target = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()  # learnable from the image
    target[:, :2] = 255
    assert model(x).shape == (2, 3, 16, 20)
    assert model.backbone is base.backbone
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for step in range(25):
        opt.zero_grad()
        loss = model.loss(x, target)
        loss.backward()
        if step == 0:  # the hinge reaches the CNN through S(y_hat) - S(y*)
            assert base.backbone.weight.grad.abs().sum() > 0 and head.pairwise.weight.grad.abs().sum() > 0
        losses.append(loss.item())
        opt.step()
    assert min(losses[-5:]) < 0.6 * losses[0]
    pred = model.predict(x)
    assert pred.shape == (2, 16, 20) and pred.dtype == torch.long
    assert model.predict(x, solver="icm").shape == (2, 16, 20)


def test_linear_svm_head_on_frozen_features() -> None:
    torch.manual_seed(1)
    feats = torch.randn(4, 5, 6, 6)
    target = feats[:, :3].argmax(1)  # linearly separable from the features
    head = LinearSVMHead(5, 3)
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    first = head.loss(feats, target).item()
    for _ in range(40):
        opt.zero_grad()
        loss = head.loss(feats, target)
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first
    assert (head.predict(feats) == target).float().mean() > 0.9
    up = head.loss(feats, torch.nn.functional.interpolate(target[:, None].float(), size=(12, 12))[:, 0].long())
    assert up.item() >= 0
    assert head.predict(feats, size=(12, 12)).shape == (4, 12, 12)
