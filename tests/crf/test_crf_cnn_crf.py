"""CRF with CNN potentials: edges, vectorised potentials, piecewise training, inference."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _crf_helpers import assert_close, gradient_step, scene
from torch import nn

from structseg.crf import CNNCRF, CNNCRFModel, piecewise_loss
from structseg.errors import ConfigError, SolverError
from structseg.graph import (
    above_below_offsets,
    downsample_labels,
    graph_mean_field,
    loopy_bp,
    surrounding_offsets,
)
from structseg.graph import grid_edges_tensor as grid_edges


def test_surrounding_edges_cover_the_box_once():
    h, w, r = 5, 6, 2
    edges = grid_edges(h, w, surrounding_offsets(r))
    pairs = {tuple(sorted(e)) for e in edges.tolist()}
    assert len(pairs) == edges.shape[0]  # each unordered pair once
    expected = {
        tuple(sorted((y1 * w + x1, y2 * w + x2)))
        for y1 in range(h) for x1 in range(w) for y2 in range(h) for x2 in range(w)
        if (y1, x1) != (y2, x2) and abs(y1 - y2) <= r and abs(x1 - x2) <= r
    }
    assert pairs == expected


def test_above_below_edges_point_down_inside_the_box():
    h, w = 6, 4
    edges = grid_edges(h, w, above_below_offsets(3, 1))
    expected = {
        (y1 * w + x1, y2 * w + x2)
        for y1 in range(h) for x1 in range(w) for y2 in range(h) for x2 in range(w)
        if 1 <= y2 - y1 <= 3 and abs(x2 - x1) <= 1
    }
    assert set(map(tuple, edges.tolist())) == expected and len(expected) == edges.shape[0]
    with pytest.raises(ConfigError):
        above_below_offsets(0, 1)


def test_vectorised_pairwise_net_equals_per_edge_mlp():
    torch.manual_seed(0)
    crf = CNNCRF(5, 3, hidden=7)
    features = torch.randn(2, 5, 4, 5)
    potentials = crf(features)
    net = crf.pairwise_nets["above_below"]
    edges = potentials.edges["above_below"]
    flat = features.flatten(2)
    w_src, w_dst = net.from_src.weight[:, :, 0, 0], net.from_dst.weight[:, :, 0, 0]
    first = torch.cat([w_src, w_dst], 1)  # the first layer on [f_src, f_dst]
    for n in range(2):
        for e in (0, 5, edges.shape[0] - 1):
            pair = torch.cat([flat[n, :, edges[e, 0]], flat[n, :, edges[e, 1]]])
            hidden = F.relu(first @ pair + net.from_src.bias)
            scores = net.out.weight[:, :, 0] @ hidden + net.out.bias
            assert_close(potentials.pairwise["above_below"][n, e], scores.view(3, 3), atol=1e-5)
    assert potentials.unary.shape == (2, 3, 4, 5)


def test_downsample_labels_takes_the_majority_and_ignores():
    target = torch.tensor([[[0, 0, 1, 1], [0, 2, 1, 1], [255, 255, 2, 2], [255, 0, 2, 2]]])
    small = downsample_labels(target, (2, 2), num_classes=3, ignore_index=255)
    assert small.tolist() == [[[0, 1], [255, 2]]]


def test_piecewise_loss_matches_local_likelihoods():
    torch.manual_seed(1)
    crf = CNNCRF(4, 3, hidden=6, edge_types={"right": [(0, 1)]})
    with torch.no_grad():
        potentials = crf(torch.randn(1, 4, 2, 3))
    target = torch.tensor([[[0, 1, 2], [1, 255, 0]]])
    total, parts = piecewise_loss(potentials, target)
    unary = potentials.unary[0].flatten(1).t()
    labels = target[0].flatten()
    nodes = [i for i in range(6) if labels[i] != 255]
    expected_unary = np.mean([-float(torch.log_softmax(unary[i], 0)[labels[i]]) for i in nodes])
    pair_terms = []
    for e, (a, b) in enumerate(potentials.edges["right"].tolist()):
        if labels[a] != 255 and labels[b] != 255:
            scores = potentials.pairwise["right"][0, e].flatten()
            pair_terms.append(-float(torch.log_softmax(scores, 0)[labels[a] * 3 + labels[b]]))
    assert len(pair_terms) == 2  # (0,1), (1,2) in row 0; row 1 touches the ignored node
    assert parts["unary"] == pytest.approx(expected_unary, rel=1e-5)
    assert parts["right"] == pytest.approx(np.mean(pair_terms), rel=1e-5)
    assert float(total) == pytest.approx(expected_unary + np.mean(pair_terms), rel=1e-5)


def synthetic_batch(seed: int = 0):
    """Features that carry the labels (plus noise) on a 6x8 grid, labels at 4x resolution."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.from_numpy(np.stack([scene(24, 32, seed=s)[1] for s in (seed, seed + 1)]))
    coarse = downsample_labels(labels, (6, 8), 3)
    features = F.one_hot(coarse, 3).permute(0, 3, 1, 2).float()
    features = (torch.cat([features, torch.randn(2, 5, 6, 8, generator=g)], 1)
                + 0.5 * torch.randn(2, 8, 6, 8, generator=g))
    return features, labels


def test_piecewise_training_lowers_the_loss():
    torch.manual_seed(2)
    features, labels = synthetic_batch()
    crf = CNNCRF(8, 3, hidden=16)
    losses = []
    for _ in range(6):
        loss, parts = piecewise_loss(crf(features), labels)
        loss.backward()
        gradient_step(crf.parameters(), lr=0.5)
        losses.append(float(loss.detach()))
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.8 * losses[0]
    assert set(parts) == {"unary", "surrounding", "above_below"}


def naive_mean_field(unary, edges, pairwise, iterations, damping):
    q = torch.softmax(unary, -1)
    for _ in range(iterations):
        field = unary.clone()
        for e, (a, b) in enumerate(edges.tolist()):
            field[:, a] += torch.einsum("nkl,nl->nk", pairwise[:, e], q[:, b])
            field[:, b] += torch.einsum("nkl,nk->nl", pairwise[:, e], q[:, a])
        q = damping * q + (1 - damping) * torch.softmax(field, -1)
    return q


def test_graph_mean_field_matches_a_naive_loop():
    torch.manual_seed(3)
    edges = grid_edges(3, 3, surrounding_offsets(1))
    unary = torch.randn(2, 9, 3, dtype=torch.float64)
    pairwise = torch.randn(2, edges.shape[0], 3, 3, dtype=torch.float64)
    assert_close(
        graph_mean_field(unary, edges, pairwise, iterations=4, damping=0.3),
        naive_mean_field(unary, edges, pairwise, 4, 0.3),
        atol=1e-12,
    )
    zero = graph_mean_field(unary, edges, torch.zeros_like(pairwise), iterations=3)
    assert_close(zero, torch.softmax(unary, -1), atol=1e-12)
    with pytest.raises(SolverError, match="damping"):
        graph_mean_field(unary, edges, pairwise, damping=1.5)


def test_infer_uses_every_edge_type():
    torch.manual_seed(4)
    crf = CNNCRF(4, 3, hidden=5)
    potentials = crf(torch.randn(1, 4, 4, 5))  # the default above/below box reaches 3 rows
    unary, edges, pairwise = potentials.graph()
    assert edges.shape[0] == sum(e.shape[0] for e in potentials.edges.values())
    expected = loopy_bp(unary, edges, pairwise, mode="max", iterations=5).beliefs
    got = CNNCRF.infer(potentials, "bp-max", iterations=5)
    assert_close(got, expected.transpose(1, 2).reshape(1, 3, 4, 5), atol=1e-6)
    for method in ("meanfield", "bp-sum"):
        beliefs = CNNCRF.infer(potentials, method, iterations=5)
        assert_close(beliefs.sum(1), torch.ones(1, 4, 5), atol=1e-5)
    with pytest.raises(ConfigError, match="unknown graph inference method .*valid: meanfield, bp-sum, bp-max"):
        CNNCRF.infer(potentials, "icm")


class StubModel(nn.Module):
    """The structseg model contract: forward_features -> {"out", "features"}, feature_channels."""

    feature_channels = 6

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 6, 3, stride=4, padding=1)
        self.head = nn.Conv2d(6, 3, 1)

    def forward_features(self, x):
        features = torch.relu(self.backbone(x))
        out = F.interpolate(self.head(features), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"out": out, "features": features}

    def forward(self, x):
        return self.forward_features(x)["out"]


def test_model_wrapper_trains_and_predicts_at_image_size():
    torch.manual_seed(5)
    images_u8 = torch.from_numpy(np.stack([scene(24, 32, seed=s)[0] for s in (0, 1)])).permute(0, 3, 1, 2)
    labels = torch.from_numpy(np.stack([scene(24, 32, seed=s)[1] for s in (0, 1)]))
    inputs = images_u8.float() / 255
    model = CNNCRFModel(StubModel(), 3, hidden=8)
    loss, _ = model.loss(inputs, labels)
    loss.backward()
    assert model.base.backbone.weight.grad is not None  # the features are trained too
    assert model.crf.pairwise_nets["surrounding"].out.weight.grad is not None
    for method in ("meanfield", "bp-sum", "bp-max"):
        probs = model.predict(inputs, images_u8, method=method, iterations=3, dense={"iterations": 2})
        assert probs.shape == (2, 3, 24, 32)
        assert_close(probs.sum(1), torch.ones(2, 24, 32), atol=1e-5)
    coarse_only = model.predict(inputs, images_u8, dense=False)
    refined = model.predict(inputs, images_u8)
    assert float((coarse_only - refined).abs().max()) > 1e-3  # the dense CRF did refine
    frozen = CNNCRFModel(StubModel(), 3, hidden=8, train_backbone=False)
    frozen.loss(inputs, labels)[0].backward()
    assert frozen.base.backbone.weight.grad is None


def test_works_on_a_real_structseg_model():
    """Through the models contract: forward_features(x)["features"] and feature_channels."""
    models = pytest.importorskip("structseg.models")
    try:
        model = models.build_model("unet", 3, base_channels=4, depth=2)
    except (KeyError, TypeError, ValueError) as exc:  # the tiny variant is not available
        pytest.skip(f"tiny U-Net not available: {exc}")
    torch.manual_seed(6)
    images_u8 = torch.from_numpy(np.stack([scene(16, 20, seed=s)[0] for s in (2, 3)])).permute(0, 3, 1, 2)
    labels = torch.from_numpy(np.stack([scene(16, 20, seed=s)[1] for s in (2, 3)]))
    crf_model = CNNCRFModel(model, 3, hidden=8, edge_types={"surrounding": surrounding_offsets(1)})
    loss, _ = crf_model.loss(images_u8.float() / 255, labels)
    loss.backward()
    probs = crf_model.predict(images_u8.float() / 255, images_u8, iterations=2, dense={"iterations": 1})
    assert probs.shape == (2, 3, 16, 20)
    assert_close(probs.sum(1), torch.ones(2, 16, 20), atol=1e-5)


def test_pmi_is_the_joint_over_the_product_of_its_marginals():
    torch.manual_seed(7)
    crf = CNNCRF(4, 3, hidden=6, edge_types={"right": [(0, 1)]})
    with torch.no_grad():
        potentials = crf(torch.randn(1, 4, 2, 3))
    pmi = potentials.pmi()
    assert pmi.unary is potentials.unary and pmi.edges is potentials.edges
    for e in range(potentials.edges["right"].shape[0]):
        joint = potentials.pairwise["right"][0, e].flatten().softmax(0).reshape(3, 3)
        for a in range(3):
            for b in range(3):
                expected = float(joint[a, b].log() - joint[a].sum().log() - joint[:, b].sum().log())
                assert float(pmi.pairwise["right"][0, e, a, b]) == pytest.approx(expected, abs=1e-5)
    independent = torch.outer(torch.tensor([0.2, 0.3, 0.5]), torch.tensor([0.6, 0.3, 0.1])).log()
    potentials.pairwise["right"] = independent.expand_as(potentials.pairwise["right"]).clone()
    assert_close(potentials.pmi().pairwise["right"], torch.zeros_like(potentials.pairwise["right"]), atol=1e-5)


@pytest.mark.parametrize("method", ["meanfield", "bp-sum", "bp-max"])
def test_the_residual_form_starts_as_the_network_and_learns_a_change(method):
    torch.manual_seed(8)
    images = torch.rand(2, 3, 24, 32)
    labels = torch.from_numpy(np.stack([scene(24, 32, seed=s)[1] for s in (0, 1)]))
    model = CNNCRFModel(StubModel(), 3, hidden=8, residual=True, pairwise="pmi", method=method, iterations=3)
    with torch.no_grad():
        assert_close(model(images), model.base(images), atol=1e-5)  # neutral CRF: the network's own logits
    weights = torch.tensor([1.0, 2.0, 0.5])
    with torch.no_grad():
        potentials = model.potentials(images)
        coarse = downsample_labels(labels, potentials.unary.shape[-2:], 3)
        plain = float(F.cross_entropy(potentials.unary, coarse, ignore_index=255))
        weighted = float(F.cross_entropy(potentials.unary, coarse, weight=weights, ignore_index=255))
        assert model.loss(images, labels)[1]["unary"] == pytest.approx(plain, rel=1e-5)
        model.class_weights = weights
        assert model.loss(images, labels)[1]["unary"] == pytest.approx(weighted, rel=1e-5)
    assert abs(weighted - plain) > 1e-3
    model(images, labels).backward()
    gradient_step(model.parameters(), lr=0.5)
    with torch.no_grad():
        assert float((model(images) - model.base(images)).abs().max()) > 1e-3  # the CRF now changes the output


def test_the_residual_output_carries_the_learnt_unary_correction_at_full_size():
    torch.manual_seed(9)
    images = torch.rand(1, 3, 24, 32)
    model = CNNCRFModel(StubModel(), 3, hidden=8, residual=True, iterations=3).eval()
    shift = torch.tensor([0.5, -1.0, 2.0])
    with torch.no_grad():
        model.crf.unary_net[-1].bias.copy_(shift)  # a class prior the CRF learnt; pairwise scores stay uniform
        prior = F.adaptive_avg_pool2d(model.base(images), model.potentials(images).unary.shape[-2:])
        change = (prior + shift[:, None, None]).log_softmax(1) - prior.log_softmax(1)
        expected = model.base(images) + F.interpolate(change, size=(24, 32), mode="bilinear", align_corners=False)
        assert_close(model(images), expected, atol=1e-5)


def test_pairwise_weight_scales_the_pair_scores_at_inference():
    torch.manual_seed(10)
    images = torch.rand(1, 3, 24, 32)
    model = CNNCRFModel(StubModel(), 3, hidden=8, iterations=3).eval()
    with torch.no_grad():
        full = model(images)
        model.pairwise_weight = 0.0
        unaries_alone = model(images)
        model.pairwise_weight = 0.5
        half = model(images)
        for net in model.crf.pairwise_nets.values():
            net.out.weight.mul_(0.5)
            net.out.bias.mul_(0.5)
        model.pairwise_weight = 1.0
        assert_close(model(images), half, atol=1e-5)  # the weight multiplies the pair scores
        unary = F.interpolate(model.potentials(images).unary.softmax(1), size=(24, 32), mode="bilinear",
                              align_corners=False)
    assert_close(unaries_alone, torch.log(unary.clamp_min(1e-8)), atol=1e-5)
    assert float((full - unaries_alone).abs().max()) > 1e-3


def test_meanfield_training_is_the_cross_entropy_of_the_inferred_logits():
    torch.manual_seed(6)
    images_u8 = torch.from_numpy(np.stack([scene(24, 32, seed=s)[0] for s in (0, 1)])).permute(0, 3, 1, 2)
    labels = torch.from_numpy(np.stack([scene(24, 32, seed=s)[1] for s in (0, 1)]))
    labels[0, :3] = 255
    inputs = images_u8.float() / 255
    model = CNNCRFModel(StubModel(), 3, hidden=8, residual=True, training="meanfield", iterations=3)
    model.class_weights = torch.tensor([1.0, 2.0, 0.5])
    loss, parts = model.loss(inputs, labels)
    expected = F.cross_entropy(model.logits(inputs), labels, weight=model.class_weights, ignore_index=255)
    assert_close(loss, expected, atol=1e-6)
    assert set(parts) == {"meanfield"}
    loss.backward()  # the gradient reaches the pair nets through the unrolled inference, even from a neutral start
    assert float(model.crf.pairwise_nets["surrounding"].out.weight.grad.abs().sum()) > 0
    optimizer = torch.optim.Adam(model.crf.parameters(), 5e-2)
    first = float(loss.detach())
    for _ in range(15):
        optimizer.zero_grad()
        value = model.loss(inputs, labels)[0]
        value.backward()
        optimizer.step()
    assert float(model.loss(inputs, labels)[0].detach()) < 0.8 * first
    with pytest.raises(ConfigError, match="training must be 'piecewise' or 'meanfield'"):
        CNNCRFModel(StubModel(), 3, training="joint")
