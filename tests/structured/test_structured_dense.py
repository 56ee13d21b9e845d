"""ssvm with the dense CRF's pairwise terms (``pairwise="dense"``): score, hinge, inference and learning."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_structured_residual import LogitNet

from structseg.crf.kernels import GaussianKernels
from structseg.crf.params import DenseCRFConfig
from structseg.errors import ConfigError
from structseg.models.wrapper import zero_layers
from structseg.structured.dense import DenseSSVMHead
from structseg.structured.models import StructuredSegmenter

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class MatrixKernels:
    """Kernels given as explicit symmetric (P, P) matrices: an operator the score can be checked against by hand."""

    def __init__(self, mats: list[torch.Tensor]) -> None:
        self.mats, self.num_kernels = mats, len(mats)

    def apply_each(self, values: torch.Tensor) -> list[torch.Tensor]:
        return [m.to(values) @ values for m in self.mats]


def _random_kernels(points: int, seed: int = 0) -> MatrixKernels:
    g = torch.Generator().manual_seed(seed)
    mats = []
    for _ in range(2):
        a = torch.rand(points, points, generator=g)
        mats.append((a + a.t()) / points)
    return MatrixKernels(mats)


def _head(k: int = 3, **options) -> DenseSSVMHead:  # noqa: ANN003
    """A head whose unaries are the prior alone (unary layer at 0)."""
    head = DenseSSVMHead(1, k, crf=DenseCRFConfig(iterations=5, sxy_gaussian=1.0, sxy_bilateral=3.0, srgb=20.0),
                         **options)
    zero_layers(head.unary)
    return head


def test_the_score_is_unaries_minus_half_the_kernel_weighted_penalties_of_every_pixel_pair() -> None:
    torch.manual_seed(0)
    k, h, w = 3, 2, 3
    head = _head(k)
    with torch.no_grad():
        head.penalty.normal_()
    unary = torch.randn(1, k, h, w)
    kernels = _random_kernels(h * w)
    labels = torch.randint(0, k, (1, h * w))
    valid = torch.tensor([[True, True, False, True, True, True]])
    mu = [p.detach() for p in head.penalties()]
    assert all(torch.equal(m, m.t()) for m in mu)
    expected = 0.0
    for i in range(h * w):
        if not valid[0, i]:
            continue
        expected += float(unary[0, labels[0, i], i // w, i % w])
        for j, m in itertools.product(range(h * w), range(2)):
            if valid[0, j]:
                expected -= 0.5 * float(kernels.mats[m][i, j] * mu[m][labels[0, i], labels[0, j]])
    got = head.score(unary, kernels, labels, valid).detach()  # type: ignore[arg-type]
    assert got.shape == (1,)
    assert abs(float(got) - expected) < 1e-4, (float(got), expected)


@pytest.mark.parametrize("weighted", [False, True])
def test_without_pairwise_terms_the_hinge_is_the_per_pixel_hinge(weighted: bool) -> None:
    torch.manual_seed(1)
    weights = torch.tensor([1.0, 3.0, 0.5]) if weighted else None
    head = _head(3, margin=2.0, class_weights=weights)
    prior = torch.randn(2, 3, 6, 7)
    image = torch.rand(2, 3, 6, 7)
    target = torch.randint(0, 3, (2, 6, 7))
    target[0, 0, :3] = 255
    loss = head.loss(torch.zeros(2, 1, 3, 4), target, prior=prior, image=image).detach()
    w = torch.ones(3) if weights is None else weights
    per_image = []
    for i in range(2):  # margin rescaling: max_k (s_k + margin w_y [k != y]) - s_y per pixel, over the weighted count
        total, count = 0.0, 0.0
        for r, c in itertools.product(range(6), range(7)):
            y = int(target[i, r, c])
            if y == 255:
                continue
            s = prior[i, :, r, c]
            total += float((s + 2.0 * w[y] * (torch.arange(3) != y)).max() - s[y])
            count += float(w[y]) if weights is not None else 1.0
        per_image.append(total / count)
    assert abs(float(loss) - float(np.mean(per_image))) < 1e-4, (float(loss), per_image)


@torch.no_grad()
def test_the_hinge_is_a_lower_bound_of_the_exact_one_and_never_negative() -> None:
    torch.manual_seed(2)
    k, h, w = 2, 2, 3
    exact_gaps = []
    for trial in range(6):
        head = _head(k, loss_normalize=False)
        head.penalty.normal_(std=0.15)
        image, prior = torch.rand(1, 3, h, w), torch.randn(1, k, h, w)
        target = torch.randint(0, k, (1, h, w))
        features = torch.zeros(1, 1, h, w)
        hinge = float(head.loss(features, target, prior=prior, image=image))
        kernels = head.kernels(image)
        unary = head.unaries(features, prior, (h, w))
        star = target.flatten(1)
        truth = float(head.score(unary, kernels, star))
        exact = max(float(head.score(unary, kernels, torch.tensor([y]))) + float((torch.tensor([y]) != star).sum())
                    for y in itertools.product(range(k), repeat=h * w)) - truth
        assert -1e-6 <= hinge <= exact + 1e-4, (trial, hinge, exact)
        aug = unary + (1.0 - F.one_hot(star, k).float().transpose(1, 2).reshape(1, k, h, w))
        first = aug.argmax(1).flatten(1)  # one of the maximiser's candidates
        assert hinge >= float(head.score(unary, kernels, first)) + float((first != star).sum()) - truth - 1e-4
        exact_gaps.append(exact - hinge)
    assert min(exact_gaps) < 1e-4  # on some of these tiny problems mean-field finds the exact maximiser


def test_prediction_without_pairwise_terms_is_the_unaries_argmax_at_the_asked_size() -> None:
    torch.manual_seed(3)
    head = _head(4)
    prior, image = torch.randn(2, 4, 8, 10), torch.rand(2, 3, 8, 10)
    labels = head.predict(torch.zeros(2, 1, 4, 5), size=(12, 15), prior=prior, image=image)
    fine = F.interpolate(prior, size=(12, 15), mode="bilinear", align_corners=False)
    assert torch.equal(labels, fine.argmax(1))
    assert torch.equal(head.predict(torch.zeros(2, 1, 4, 5), prior=prior, image=image), prior.argmax(1))


def _two_region_scenes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (n, 3, 20, 20) in [0, 1] of two coloured regions split at a random column, their labels, and logits
    that are the labels' one-hot plus noise strong enough to flip about a quarter of the pixels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, 20, 20, dtype=torch.long)
    for i in range(n):
        labels[i, :, int(torch.randint(6, 14, (1,), generator=g)):] = 1
    colours = torch.tensor([[0.8, 0.2, 0.2], [0.2, 0.3, 0.8]])
    images = colours[labels].permute(0, 3, 1, 2) + 0.03 * torch.randn(n, 3, 20, 20, generator=g)
    logits = F.one_hot(labels, 2).permute(0, 3, 1, 2).float() + 0.8 * torch.randn(n, 2, 20, 20, generator=g)
    return images.clamp(0, 1), labels, logits


def test_the_hinge_learns_smoothing_that_beats_the_unaries_alone() -> None:
    torch.manual_seed(4)
    head = DenseSSVMHead(1, 2, crf=DenseCRFConfig(iterations=5, sxy_gaussian=1.0, sxy_bilateral=4.0, srgb=30.0))
    head.unary.requires_grad_(False)
    zero_layers(head.unary)
    images, labels, logits = _two_region_scenes(8, seed=0)
    features = torch.zeros(8, 1, 5, 5)
    optimiser = torch.optim.Adam([head.penalty], lr=0.005)
    losses = []
    for _ in range(30):
        loss = head.loss(features, labels, prior=logits, image=images)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses
    mu = head.penalties()[1].detach()  # the appearance kernel: disagreeing labels pay more than agreeing ones
    assert float(mu[0, 1]) > max(float(mu[0, 0]), float(mu[1, 1])), mu
    test_images, test_labels, test_logits = _two_region_scenes(8, seed=1)
    predicted = head.predict(features, prior=test_logits, image=test_images)
    unary_acc = float((test_logits.argmax(1) == test_labels).float().mean())
    acc = float((predicted == test_labels).float().mean())
    assert acc > unary_acc + 0.1, (unary_acc, acc)


def test_the_kernels_come_from_the_crf_widths_and_the_inputs_colours() -> None:
    cfg = DenseCRFConfig(iterations=1, sxy_gaussian=2.0, sxy_bilateral=5.0, srgb=10.0)
    head = DenseSSVMHead(1, 2, crf=cfg, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    image = torch.rand(1, 3, 4, 5)
    normalized = (image - 0.5) / 0.25
    values = torch.randn(20, 2)
    direct = GaussianKernels.dense_crf(255 * image, sxy_gaussian=2.0, sxy_bilateral=5.0, srgb=10.0)
    for a, b in zip(head.kernels(normalized).apply_each(values), direct.apply_each(values)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_bad_use_is_a_clear_error() -> None:
    head = _head(2)
    with pytest.raises(ConfigError, match="pairwise=dense needs the network's input"):
        head.loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 4, 4, dtype=torch.long), prior=torch.zeros(1, 2, 4, 4))
    with pytest.raises(ConfigError, match="pairwise=dense needs the network's input"):
        head.predict(torch.zeros(1, 1, 2, 2))
    with pytest.raises(ConfigError, match="model.structured.margin must be > 0"):
        _head(2, margin=0.0)


def test_a_segmenter_with_a_dense_head_reads_the_input_and_has_no_labeling_problems() -> None:
    torch.manual_seed(5)
    net = LogitNet()
    model = StructuredSegmenter(net, DenseSSVMHead(net.feature_channels, 3, crf=DenseCRFConfig(iterations=3)),
                                residual=True, train_backbone=False, train_unary=False).eval()
    x = torch.randn(2, 3, 8, 12)
    with torch.no_grad():
        logits = net.forward_features(x)["out"]
    assert torch.equal(model.predict(x), logits.argmax(1))  # penalties start at 0: the network's own labels
    with torch.no_grad():
        model.head.penalty.normal_()
    loss = model.loss(x, torch.randint(0, 3, (2, 8, 12)))
    assert float(loss.detach()) >= 0
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is not None] == ["head.penalty"]
    assert model.predict(x, size=(16, 24)).shape == (2, 16, 24)
    with pytest.raises(ConfigError, match="sparse graph"):
        model.problems(x)


def test_config_dense_pairwise_needs_the_input_grid() -> None:
    from structseg.engine.config import load_config

    with pytest.raises(ConfigError, match=r"pairwise'=dense .* 'model.structured.grid'=input, got 'features'"):
        load_config(None, ["model.head=ssvm", "model.structured.pairwise=dense"])
    dense = ["model.head=ssvm", "model.structured.pairwise=dense", "model.structured.grid=input"]
    for extra in ("model.structured.eval_solver=milp", "model.structured.upsample=refine",
                  "model.structured.solver_options={max_iter: 3}"):
        with pytest.raises(ConfigError, match=f"infers by mean-field .*{extra.split('.')[-1].split('=')[0]}"):
            load_config(None, [*dense, extra])
    cfg = load_config(None, dense)
    assert cfg.model.structured.pairwise == "dense"
    assert np.isfinite(cfg.crf.sxy_bilateral)
