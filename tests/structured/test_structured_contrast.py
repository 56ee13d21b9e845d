"""ssvm on the input's pixels with contrast-sensitive Potts terms (``pairwise="contrast"``, ``grid="input"``)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_structured_residual import LogitNet

from structseg.errors import ConfigError
from structseg.graph import grid_edges
from structseg.structured.contrast import CONTRAST_STEP
from structseg.structured.models import StructuredSegmenter, StructuredSVMHead

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _contrast_head(**options) -> StructuredSVMHead:  # noqa: ANN003
    head = StructuredSVMHead(6, 3, pairwise="contrast", grid="input", contrast_sigma=0.5, **options)
    with torch.no_grad():
        head.contrast.copy_(torch.tensor([[0.01, -0.02, 0.0], [0.04, 0.02, 0.06]]))
    return head


def test_contrast_rewards_follow_the_colour_difference_of_each_pixel_edge() -> None:
    torch.manual_seed(0)
    head = _contrast_head()
    image = torch.randn(2, 3, 5, 7)
    features = torch.randn(2, 6, 2, 2)
    prior = torch.randn(2, 3, 5, 7)
    unary, pair, edges = head.potentials(features, prior, image)
    assert np.array_equal(edges, grid_edges(5, 7, 4))
    pixels = image.flatten(2)
    for n, e in itertools.product(range(2), range(0, len(edges), 5)):
        i, j = edges[e]
        kernel = torch.exp(-(pixels[n, :, i] - pixels[n, :, j]).pow(2).sum() / (2 * 0.5 ** 2))
        expected = CONTRAST_STEP * (head.contrast[0] + kernel * head.contrast[1])
        torch.testing.assert_close(pair[n, e], expected)
    fine = F.interpolate(head.unary(features), size=(5, 7), mode="bilinear", align_corners=False) + prior
    torch.testing.assert_close(unary, fine.flatten(2).transpose(1, 2))


def test_the_input_grid_map_is_the_best_labelling_by_brute_force() -> None:
    torch.manual_seed(1)
    head = _contrast_head(solver="ilp")
    image, features = torch.randn(1, 3, 2, 3), torch.randn(1, 6, 1, 1)
    with torch.no_grad():
        head.unary.weight.normal_()
        labels = head.predict(features, image=image)
        best = max(itertools.product(range(3), repeat=6),
                   key=lambda y: float(head.score(features, torch.tensor(y).view(1, 2, 3), image=image)))
    assert labels.shape == (1, 2, 3)
    torch.testing.assert_close(head.score(features, labels, image=image),
                               head.score(features, torch.tensor(best).view(1, 2, 3), image=image))


def test_the_hinge_sees_thin_structures_at_the_inputs_resolution() -> None:
    head = StructuredSVMHead(6, 3, pairwise="contrast", grid="input", solver="icm")
    features, image = torch.zeros(1, 6, 2, 2), torch.zeros(1, 3, 8, 8)
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, :, 3] = 2  # one column wide: gone on the 2 x 2 feature grid
    assert head.truth_at(target, head.grid_size(features, image)).eq(2).sum() == 8
    assert float(head.loss(features, target, image=image).detach()) > 0


@pytest.mark.parametrize("attractive", [False, True])
def test_a_contrast_head_learns_to_smooth_where_the_colour_is_flat(attractive: bool) -> None:
    torch.manual_seed(2)
    net = LogitNet()
    model = StructuredSegmenter(net, StructuredSVMHead(6, 3, pairwise="contrast", grid="input", solver="icm",
                                                       attractive=attractive),
                                residual=True, train_backbone=False)
    x = torch.zeros(4, 3, 16, 20)
    x[:, :, :, 10:] = 1.0  # two flat halves
    target = torch.zeros(4, 16, 20, dtype=torch.long)
    target[:, :, 10:] = 1
    x = x + 0.05 * torch.randn_like(x)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-2)
    first = float(model.loss(x, target).detach())
    for _ in range(30):
        optimizer.zero_grad()
        model.loss(x, target).backward()
        optimizer.step()
    assert float(model.loss(x, target).detach()) < first
    weights = CONTRAST_STEP * model.head.contrast.detach()
    assert float(weights[1, :2].min()) > 0  # agreement inside the flat halves pays


def test_contrast_terms_need_the_image() -> None:
    head = StructuredSVMHead(6, 3, pairwise="contrast")
    with pytest.raises(ConfigError, match="pairwise=contrast needs the network's input"):
        head.potentials(torch.zeros(1, 6, 2, 2))
    with pytest.raises(ConfigError, match="grid=input needs the network's input"):
        StructuredSVMHead(6, 3, grid="input").potentials(torch.zeros(1, 6, 2, 2))
    with pytest.raises(ConfigError, match="model.structured.grid"):
        StructuredSVMHead(6, 3, grid="labels")


def test_a_fixed_unary_layer_needs_the_residual_form_and_trains_only_the_pairwise_terms() -> None:
    head = StructuredSVMHead(6, 3, pairwise="contrast", grid="input")
    model = StructuredSegmenter(LogitNet(), head, residual=True, train_backbone=False, train_unary=False)
    assert [n for n, p in model.head.named_parameters() if p.requires_grad] == ["contrast"]
    with pytest.raises(ConfigError, match="train_unary=false needs model.structured.residual=true"):
        StructuredSegmenter(LogitNet(), StructuredSVMHead(6, 3), train_unary=False)


def test_without_the_constant_term_only_the_contrast_reward_is_paid_and_learnt() -> None:
    torch.manual_seed(4)
    head = _contrast_head(contrast_constant=False, solver="icm")
    image, features = torch.randn(1, 3, 4, 5), torch.randn(1, 6, 2, 2)
    _, pair, edges = head.potentials(features, image=image)
    pixels = image.flatten(2)
    for e in range(len(edges)):
        i, j = edges[e]
        kernel = torch.exp(-(pixels[0, :, i] - pixels[0, :, j]).pow(2).sum() / (2 * 0.5 ** 2))
        torch.testing.assert_close(pair[0, e], CONTRAST_STEP * kernel * head.contrast[1])
    target = torch.randint(0, 3, (1, 4, 5))
    head.loss(features, target, image=image).backward()
    assert head.contrast.grad is not None
    assert float(head.contrast.grad[0].abs().max()) == 0.0 and float(head.contrast.grad[1].abs().max()) > 0


def test_attractive_rewards_are_clipped_at_zero_and_need_contrast_terms() -> None:
    torch.manual_seed(5)
    head = _contrast_head(attractive=True)  # contrast weights with negative entries
    image, features = torch.randn(1, 3, 4, 5), torch.randn(1, 6, 2, 2)
    _, pair, _ = head.potentials(features, image=image)
    assert float(head.contrast.detach().min()) < 0 and float(pair.detach().min()) >= 0
    clipped = _contrast_head()  # the same weights, clipped by hand: each a_c and b_c at least 0
    with torch.no_grad():
        clipped.contrast.clamp_(min=0)
    torch.testing.assert_close(pair, clipped.potentials(features, image=image)[1])
    with pytest.raises(ConfigError, match="attractive and contrast_constant need pairwise=contrast"):
        StructuredSVMHead(6, 3, pairwise="agreement", attractive=True)
    with pytest.raises(ConfigError, match="attractive and contrast_constant need pairwise=contrast"):
        StructuredSVMHead(6, 3, pairwise="full", contrast_constant=False)
