"""Context decides the class: on the synthetic scenes a star is ``sky_star`` or ``ground_star`` by the region
around it, never by what it looks like. Each node of a coarse grid gets local features that say "star" but not
which (the fractions of sky background, ground background, each shape and "any star" in its cell), so a
unary-only network can only guess between the two star classes; the CNN-CRF's pairwise potentials and the
message estimators see the neighbours and must tell them apart."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structseg.crf.cnn_crf import CNNCRF, piecewise_loss
from structseg.crf.message_net import MessageEstimator
from structseg.data.synthetic import GROUND_STAR, SKY_STAR, SyntheticShapes
from structseg.graph import downsample_labels

STRIDE, SIZE, K = 4, 64, 8
GRID = (SIZE // STRIDE, SIZE // STRIDE)


def _scenes(split: str, count: int) -> tuple[Tensor, Tensor]:
    """Local features (N, 8, h, w) and full-resolution masks (N, H, W)."""
    data = SyntheticShapes(split, size=SIZE, length=count, seed=3)
    features, masks = [], []
    for i in range(count):
        scene = data.render(i)
        mask, ground = torch.from_numpy(scene.mask.astype("int64")), torch.from_numpy(scene.ground)
        background = mask == 0
        channels = [background & ~ground, background & ground, *(mask == c for c in range(1, 6)),
                    (mask == SKY_STAR) | (mask == GROUND_STAR)]
        features.append(F.avg_pool2d(torch.stack(channels).float()[None], STRIDE)[0])
        masks.append(mask)
    return torch.stack(features), torch.stack(masks)


def _star_iou(pred: Tensor, labels: Tensor) -> float:
    ious = [float(((pred == c) & (labels == c)).sum() / ((pred == c) | (labels == c)).sum().clamp_min(1))
            for c in (SKY_STAR, GROUND_STAR)]
    return sum(ious) / 2


def _fit(model: nn.Module, loss: Callable[[nn.Module, Tensor, Tensor], Tensor], data: tuple[Tensor, Tensor]) -> None:
    """120 Adam steps on batches of 16 drawn by a fixed seed."""
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    pick = torch.Generator().manual_seed(0)
    for _ in range(120):
        batch = torch.randint(0, len(data[0]), (16,), generator=pick)
        value = loss(model, data[0][batch], data[1][batch])
        optimizer.zero_grad()
        value.backward()
        optimizer.step()


def _marginal_ce(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    logits = model(x)
    return F.cross_entropy(logits, downsample_labels(y, GRID, K, 255), ignore_index=255)


@dataclass
class Context:
    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    labels: Tensor  # the test masks reduced to the grid
    unary_iou: float  # mean IoU of the two star classes, unary-only network


@pytest.fixture(scope="module")
def context() -> Context:
    train, test = _scenes("train", 200), _scenes("test", 60)
    torch.manual_seed(0)
    unary_only = MessageEstimator(8, K, hidden=16, edge_types={})
    _fit(unary_only, _marginal_ce, train)
    labels = downsample_labels(test[1], GRID, K, 255)
    assert bool((labels == SKY_STAR).any()) and bool((labels == GROUND_STAR).any())
    with torch.no_grad():
        return Context(train, test, labels, _star_iou(unary_only(test[0]).argmax(1), labels))


@pytest.fixture(scope="module")
def crf(context: Context) -> CNNCRF:
    torch.manual_seed(0)
    model = CNNCRF(8, K, hidden=16)
    _fit(model, lambda m, x, y: piecewise_loss(m(x), y)[0], context.train)
    return model


def test_the_unary_only_network_cannot_tell_the_stars_apart(context: Context) -> None:
    assert context.unary_iou < 0.7


@pytest.mark.parametrize("method", ["meanfield", "bp-sum"])
def test_the_cnn_crf_tells_the_stars_apart_by_context(context: Context, crf: CNNCRF, method: str) -> None:
    with torch.no_grad():
        potentials = crf(context.test[0])
        own_unary = _star_iou(potentials.unary.argmax(1), context.labels)
        crf_iou = _star_iou(CNNCRF.infer(potentials, method).argmax(1), context.labels)
    assert crf_iou > own_unary + 0.15
    assert crf_iou > context.unary_iou + 0.15


def test_the_message_estimators_tell_the_stars_apart_by_context(context: Context) -> None:
    torch.manual_seed(0)
    estimator = MessageEstimator(8, K, hidden=16)
    _fit(estimator, _marginal_ce, context.train)
    with torch.no_grad():
        iou = _star_iou(estimator(context.test[0]).argmax(1), context.labels)
    assert iou > context.unary_iou + 0.15


def test_the_cnn_crf_trained_through_mean_field_tells_the_stars_apart(context: Context) -> None:
    torch.manual_seed(0)
    model = CNNCRF(8, K, hidden=16)

    def beliefs_ce(m: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        q = CNNCRF.infer(m(x), "meanfield", iterations=3)
        return F.nll_loss(q.clamp_min(1e-8).log(), downsample_labels(y, GRID, K, 255), ignore_index=255)

    _fit(model, beliefs_ce, context.train)
    with torch.no_grad():
        iou = _star_iou(CNNCRF.infer(model(context.test[0]), "meanfield", iterations=3).argmax(1), context.labels)
    assert iou > context.unary_iou + 0.15
