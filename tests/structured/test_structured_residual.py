"""The residual SVM heads (the network's logits as prior) and ssvm's "refine" upsampling of the grid's MAP."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from structseg.errors import ConfigError
from structseg.structured.models import LinearSVMHead, StructuredSegmenter, StructuredSVMHead, add_prior

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class LogitNet(nn.Module):
    """Features at 1/4 resolution; its own logits are a fixed function of the image, at the input size."""

    def __init__(self, channels: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, channels, 3, stride=4, padding=1)
        self.classifier = nn.Conv2d(3, classes, 3, padding=1)
        self.feature_channels = channels

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.classifier(x), "features": torch.tanh(self.backbone(x))}


def test_add_prior_pools_a_finer_prior_and_interpolates_a_coarser_one() -> None:
    scores = torch.zeros(1, 2, 4, 6)
    fine = torch.arange(2 * 8 * 12, dtype=torch.float32).view(1, 2, 8, 12)
    torch.testing.assert_close(add_prior(scores, fine), F.avg_pool2d(fine, 2))
    coarse = torch.randn(1, 2, 2, 3)
    torch.testing.assert_close(add_prior(scores, coarse),
                               F.interpolate(coarse, size=(4, 6), mode="bilinear", align_corners=False))
    assert add_prior(scores, None) is scores


@pytest.mark.parametrize("head", ["svm", "ssvm"])
def test_a_residual_head_starts_as_the_network(head: str) -> None:
    torch.manual_seed(0)
    net = LogitNet()
    svm = LinearSVMHead(6, 3) if head == "svm" else StructuredSVMHead(6, 3, upsample="refine", solver="icm")
    model = StructuredSegmenter(net, svm, residual=True, train_backbone=False).eval()
    x = torch.randn(2, 3, 16, 20)
    with torch.no_grad():
        logits = net.forward_features(x)["out"]
        torch.testing.assert_close(model(x), logits)
        fine = F.interpolate(logits, size=(24, 30), mode="bilinear", align_corners=False)
        assert torch.equal(model.predict(x, size=(24, 30)), fine.argmax(1))


def test_a_frozen_residual_head_trains_only_the_head_and_lowers_its_loss() -> None:
    torch.manual_seed(0)
    net = LogitNet()
    model = StructuredSegmenter(net, StructuredSVMHead(6, 3, solver="icm"), residual=True, train_backbone=False)
    model.train()
    assert not net.training  # frozen: BatchNorm statistics would not move
    x = torch.randn(4, 3, 16, 20)
    target = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = model.loss(x, target)
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert min(losses[-5:]) < 0.7 * losses[0]
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert model.head.unary.weight.abs().sum() > 0


@pytest.mark.parametrize("kind", ["agreement", "full"])
def test_support_is_the_score_change_of_relabelling_one_node(kind: str) -> None:
    """Oracle: S(y with node i set to k) - unary_i(k) - support_i(k) does not depend on k."""
    torch.manual_seed(1)
    head = StructuredSVMHead(4, 3, pairwise=kind, connectivity=8).double()
    nn.init.normal_(head.pairwise.weight)
    feats = torch.randn(1, 4, 3, 4, dtype=torch.float64)
    labels = torch.randint(0, 3, (1, 3, 4))
    support = head.support(feats, labels)
    unary = head(feats)
    for i in range(12):
        rest = []
        for k in range(3):
            y = labels.clone().view(1, -1)
            y[0, i] = k
            score = head.score(feats, y.view(1, 3, 4))[0]
            r, c = divmod(i, 4)
            rest.append(score - unary[0, k, r, c] - support[0, k, r, c])
        torch.testing.assert_close(torch.stack(rest), rest[0].expand(3))


def test_refine_keeps_the_map_where_the_unaries_agree_and_follows_them_at_a_finer_size() -> None:
    torch.manual_seed(2)
    head = StructuredSVMHead(4, 3, upsample="refine", solver="icm")
    feats = torch.randn(2, 4, 5, 6)
    grid = head.predict(feats)
    assert torch.equal(head.predict(feats, size=(5, 6)), grid)
    # no pairwise terms: refine is the argmax of the bilinearly upsampled unaries
    fine = F.interpolate(head(feats), size=(15, 18), mode="bilinear", align_corners=False).argmax(1)
    assert torch.equal(head.predict(feats, size=(15, 18)), fine)
    nearest = StructuredSVMHead(4, 3, solver="icm")
    nearest.load_state_dict(head.state_dict())
    assert torch.equal(nearest.predict(feats, size=(15, 18)),
                       F.interpolate(grid[:, None].float(), size=(15, 18), mode="nearest")[:, 0].long())
    # strong agreement rewards: inside a uniform MAP region (a cell whose 3x3 block shares its label) every fine
    # pixel takes the MAP's label, whatever its unaries say
    with torch.no_grad():
        head.pairwise.bias.fill_(50.0)
    smooth = head.predict(feats)
    refined = head.predict(feats, size=(15, 18))
    blocks = F.unfold(F.pad(smooth[:, None].float(), (1, 1, 1, 1), value=-1), 3).view(2, 9, 5, 6)
    uniform = (blocks == smooth[:, None].float()).all(1)
    near = lambda t: F.interpolate(t[:, None].float(), size=(15, 18), mode="nearest")[:, 0]  # noqa: E731
    inside = near(uniform.float()) > 0
    assert inside.sum() > 20
    assert torch.equal(refined[inside], near(smooth).long()[inside])


def test_unknown_upsampling_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="upsample must be 'nearest' or 'refine', got 'cubic'"):
        StructuredSVMHead(4, 3, upsample="cubic")


def test_the_segmenters_problems_are_the_heads_on_its_inputs() -> None:
    torch.manual_seed(3)
    net = LogitNet()
    head = StructuredSVMHead(6, 3, solver="icm")
    nn.init.normal_(head.pairwise.weight)
    model = StructuredSegmenter(net, head, residual=True).eval()
    x = torch.randn(2, 3, 16, 20)
    with torch.no_grad():
        out = net.forward_features(x)
        expected = head.problems(out["features"], prior=out["out"])
    got = model.problems(x)
    assert len(got) == 2 and all(torch.equal(torch.as_tensor(a.unary), torch.as_tensor(b.unary))
                                 and torch.equal(torch.as_tensor(a.pairwise), torch.as_tensor(b.pairwise))
                                 for a, b in zip(got, expected))
    with pytest.raises(ConfigError, match="needs an ssvm head"):
        StructuredSegmenter(net, LinearSVMHead(6, 3)).problems(x)
