"""Each loss against an independent per-pixel loop (float64, tiny inputs), with ignore pixels and class weights."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from structseg.losses import (
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    KLDivergenceLoss,
    LovaszSoftmaxLoss,
    OhemCrossEntropyLoss,
    SoftIoULoss,
    build_loss,
)
from structseg.metrics import ConfusionMatrix

K, IGNORE = 3, 255
WEIGHTS = [0.5, 2.0, 1.0]


def make_batch(seed: int = 0, n: int = 2, h: int = 3, w: int = 4, k: int = K):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, h, w, generator=g, dtype=torch.float64)
    target = torch.randint(0, k, (n, h, w), generator=g)
    target[0, 0, :2] = IGNORE
    target[-1, -1, -1] = IGNORE
    return logits, target


def pixels(logits: torch.Tensor, target: torch.Tensor):
    """Yield (image index, softmax probabilities as a list, label) for every non-ignored pixel."""
    n, k, h, w = logits.shape
    for b in range(n):
        for i in range(h):
            for j in range(w):
                label = int(target[b, i, j])
                if label == IGNORE:
                    continue
                z = [float(logits[b, c, i, j]) for c in range(k)]
                top = max(z)
                e = [math.exp(v - top) for v in z]
                yield b, [v / sum(e) for v in e], label


def weight_of(weights, c):
    return 1.0 if weights is None else weights[c]


# ---------------------------------------------------------------- cross-entropy family
@pytest.mark.parametrize("weights", [None, WEIGHTS])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy(weights, smoothing):
    logits, target = make_batch()
    num = den = 0.0
    for _, p, y in pixels(logits, target):
        smooth = sum(weight_of(weights, c) * -math.log(p[c]) for c in range(K)) / K
        num += (1 - smoothing) * weight_of(weights, y) * -math.log(p[y]) + smoothing * smooth
        den += weight_of(weights, y)
    loss = CrossEntropyLoss(K, label_smoothing=smoothing, ignore_index=IGNORE, class_weights=weights)
    value = loss(logits, target)
    assert float(value) == pytest.approx(num / den, rel=1e-10)
    w = None if weights is None else torch.tensor(weights, dtype=torch.float64)
    reference = F.cross_entropy(logits, target, weight=w, ignore_index=IGNORE, label_smoothing=smoothing)
    assert float(value) == pytest.approx(float(reference), rel=1e-10)


@pytest.mark.parametrize("alpha", [None, [0.25, 0.5, 0.75]])
@pytest.mark.parametrize("weights", [None, WEIGHTS])
def test_focal(alpha, weights):
    gamma = 2.0
    logits, target = make_batch(1)
    num = den = 0.0
    for _, p, y in pixels(logits, target):
        a = 1.0 if alpha is None else alpha[y]
        num += a * weight_of(weights, y) * (1 - p[y]) ** gamma * -math.log(p[y])
        den += weight_of(weights, y)
    loss = FocalLoss(K, gamma=gamma, alpha=alpha, ignore_index=IGNORE, class_weights=weights)
    assert float(loss(logits, target)) == pytest.approx(num / den, rel=1e-10)


@pytest.mark.parametrize("weights", [None, WEIGHTS])
def test_focal_gamma_zero_is_cross_entropy(weights):
    logits, target = make_batch(2)
    focal = FocalLoss(K, gamma=0.0, class_weights=weights)(logits, target)
    ce = CrossEntropyLoss(K, class_weights=weights)(logits, target)
    assert float(focal) == pytest.approx(float(ce), rel=1e-12)
    assert float(FocalLoss(K, gamma=2.0)(logits, target)) < float(CrossEntropyLoss(K)(logits, target))


def ohem_oracle(logits, target, thresh, min_kept, weights):
    items = list(pixels(logits, target))
    by_prob = sorted(p[y] for _, p, y in items)
    kth = by_prob[min(min_kept, len(items)) - 1] if min_kept > 0 else -1.0
    num = den = 0.0
    for _, p, y in items:
        if p[y] < thresh or p[y] <= kth:
            num += weight_of(weights, y) * -math.log(p[y])
            den += weight_of(weights, y)
    return num / den, sum(1 for _, p, y in items if p[y] < thresh or p[y] <= kth)


@pytest.mark.parametrize("thresh,min_kept", [(0.4, 0), (0.2, 25), (0.2, 1), (0.9, 1000)])
@pytest.mark.parametrize("weights", [None, WEIGHTS])
def test_ohem(thresh, min_kept, weights):
    logits, target = make_batch(3, h=4, w=5)
    expected, kept = ohem_oracle(logits, target, thresh, min_kept, weights)
    loss = OhemCrossEntropyLoss(K, thresh=thresh, min_kept=min_kept, class_weights=weights)
    assert float(loss(logits, target)) == pytest.approx(expected, rel=1e-10)
    valid = target != IGNORE
    mask = loss.hard_mask(logits, target.masked_fill(~valid, 0), valid)
    assert int(mask.sum()) == kept >= min(min_kept, int(valid.sum()))


def test_ohem_keeping_everything_is_cross_entropy():
    logits, target = make_batch(4)
    ohem = OhemCrossEntropyLoss(K, thresh=1.0, min_kept=0, class_weights=WEIGHTS)(logits, target)
    ce = CrossEntropyLoss(K, class_weights=WEIGHTS)(logits, target)
    assert float(ohem) == pytest.approx(float(ce), rel=1e-12)


# ---------------------------------------------------------------- region losses
def region_oracle(logits, target, score, *, classes, per_image, weights):
    """Per-class sums over valid pixels, per image or over the batch, then the (weighted) class mean."""
    groups = range(logits.shape[0]) if per_image else [None]
    losses = []
    for group in groups:
        inter, psum, ysum = [0.0] * K, [0.0] * K, [0.0] * K
        count = 0
        for b, p, y in pixels(logits, target):
            if group is not None and b != group:
                continue
            count += 1
            for c in range(K):
                inter[c] += p[c] * (y == c)
                psum[c] += p[c]
                ysum[c] += float(y == c)
        counted = [c for c in range(K) if (ysum[c] > 0 if classes == "present" else count > 0)]
        if not counted:
            continue
        total = sum(weight_of(weights, c) for c in counted)
        losses.append(sum(weight_of(weights, c) * (1 - score(inter[c], psum[c], ysum[c])) for c in counted) / total)
    return sum(losses) / len(losses)


def region_batch():
    logits, target = make_batch(5, n=3)
    target[2][target[2] == 1] = 0  # image 2 lacks class 1
    target[1] = IGNORE  # image 1 has no valid pixel
    return logits, target


@pytest.mark.parametrize("classes", ["present", "all"])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("weights", [None, WEIGHTS])
def test_dice(classes, per_image, weights):
    logits, target = region_batch()
    smooth = 0.5
    expected = region_oracle(logits, target, lambda i, p, y: (2 * i + smooth) / (p + y + smooth),
                             classes=classes, per_image=per_image, weights=weights)
    loss = DiceLoss(K, smooth=smooth, classes=classes, per_image=per_image, class_weights=weights)
    assert float(loss(logits, target)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("classes", ["present", "all"])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("weights", [None, WEIGHTS])
def test_soft_iou(classes, per_image, weights):
    logits, target = region_batch()
    expected = region_oracle(logits, target, lambda i, p, y: i / (p + y - i),
                             classes=classes, per_image=per_image, weights=weights)
    loss = SoftIoULoss(K, classes=classes, per_image=per_image, class_weights=weights)
    assert float(loss(logits, target)) == pytest.approx(expected, rel=1e-10)


# ---------------------------------------------------------------- Lovász-softmax
def lovasz_oracle_class(errors: list[float], fg: set[int], n: int) -> float:
    """Lovász extension of Delta(S) = |S| / |fg ∪ S|, straight from its definition with Python sets."""
    order = sorted(range(n), key=lambda i: -errors[i])

    def delta(s: set[int]) -> float:
        union = fg | s
        return len(s) / len(union) if union else 0.0

    total, taken, previous = 0.0, set(), 0.0
    for i in order:
        taken.add(i)
        current = delta(taken)
        total += errors[i] * (current - previous)
        previous = current
    return total


def lovasz_oracle(logits, target, *, classes, per_image, weights):
    groups = range(logits.shape[0]) if per_image else [None]
    losses = []
    for group in groups:
        items = [(p, y) for b, p, y in pixels(logits, target) if group is None or b == group]
        if not items:
            continue
        per_class = {}
        for c in range(K):
            fg = {i for i, (_, y) in enumerate(items) if y == c}
            if classes == "present" and not fg:
                continue
            errors = [abs(float(y == c) - p[c]) for p, y in items]
            per_class[c] = lovasz_oracle_class(errors, fg, len(items))
        total = sum(weight_of(weights, c) for c in per_class)
        losses.append(sum(weight_of(weights, c) * v for c, v in per_class.items()) / total)
    return sum(losses) / len(losses)


@pytest.mark.parametrize("classes", ["present", "all"])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("weights", [None, WEIGHTS])
def test_lovasz(classes, per_image, weights):
    logits, target = region_batch()
    expected = lovasz_oracle(logits, target, classes=classes, per_image=per_image, weights=weights)
    loss = LovaszSoftmaxLoss(K, classes=classes, per_image=per_image, class_weights=weights)
    assert float(loss(logits, target)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("loss_cls", [LovaszSoftmaxLoss, SoftIoULoss])
def test_one_hot_probabilities_give_one_minus_iou(loss_cls):
    """On (numerically) one-hot probabilities both IoU surrogates equal 1 - mIoU of the hard prediction."""
    g = torch.Generator().manual_seed(8)
    target = torch.randint(0, K, (2, 5, 5), generator=g)
    target[0, 0] = IGNORE
    pred = torch.randint(0, K, (2, 5, 5), generator=g)
    logits = F.one_hot(pred, K).permute(0, 3, 1, 2).double() * 60.0
    cm = ConfusionMatrix(K, ignore_index=IGNORE)
    cm.update(pred, target)
    m = cm.compute()
    in_truth = cm.matrix.sum(1) > 0
    expected = 1 - float(m.iou[in_truth].mean())
    assert float(loss_cls(K)(logits, target)) == pytest.approx(expected, abs=1e-9)


# ---------------------------------------------------------------- KL to soft targets
@pytest.mark.parametrize("weights", [None, WEIGHTS])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_kl_soft_targets(weights, temperature):
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(2, K, 3, 3, generator=g, dtype=torch.float64)
    q = torch.softmax(torch.randn(2, K, 3, 3, generator=g, dtype=torch.float64) * 2, dim=1)
    q[0, :, 0, 0] = 0.0  # all-zero: ignored
    q[1, :, 1, 1] = torch.tensor([0.0, 1.0, 0.0])  # zeros inside a valid pixel: 0 log 0 = 0
    mask = torch.ones(2, 3, 3, dtype=torch.bool)
    mask[1, 2, 2] = False
    num = den = 0.0
    for b in range(2):
        for i in range(3):
            for j in range(3):
                if not mask[b, i, j] or float(q[b, :, i, j].sum()) == 0:
                    continue
                z = [float(logits[b, c, i, j]) / temperature for c in range(K)]
                log_norm = math.log(sum(math.exp(v) for v in z))
                for c in range(K):
                    qc = float(q[b, c, i, j])
                    if qc > 0:
                        num += weight_of(weights, c) * qc * (math.log(qc) - (z[c] - log_norm))
                        den += weight_of(weights, c) * qc
    expected = num / den * temperature**2
    loss = KLDivergenceLoss(K, temperature=temperature, class_weights=weights)
    assert float(loss(logits, q, mask=mask)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("weights", [None, WEIGHTS])
def test_kl_hard_target_is_cross_entropy(weights):
    logits, target = make_batch(10)
    kl = KLDivergenceLoss(K, class_weights=weights)(logits, target)
    ce = CrossEntropyLoss(K, class_weights=weights)(logits, target)
    assert float(kl) == pytest.approx(float(ce), rel=1e-12)


# ---------------------------------------------------------------- weighted sum
def test_weighted_sum_equals_sum_of_parts():
    logits, target = make_batch(11)
    spec = [
        {"name": "cross_entropy", "weight": 0.7, "label_smoothing": 0.1},
        {"name": "dice", "weight": 0.3},
        {"name": "lovasz", "weight": 2.0, "class_weights": None},
        {"name": "dice", "weight": 1.5, "smooth": 0.0},
    ]
    combined = build_loss(spec, num_classes=K, class_weights=WEIGHTS)
    total = combined(logits, target)
    parts = [
        CrossEntropyLoss(K, label_smoothing=0.1, class_weights=WEIGHTS)(logits, target),
        DiceLoss(K, class_weights=WEIGHTS)(logits, target),
        LovaszSoftmaxLoss(K)(logits, target),
        DiceLoss(K, smooth=0.0, class_weights=WEIGHTS)(logits, target),
    ]
    weights = [0.7, 0.3, 2.0, 1.5]
    assert float(total) == pytest.approx(sum(w * float(p) for w, p in zip(weights, parts)), rel=1e-12)
    assert list(combined.last_parts) == ["cross_entropy", "dice", "lovasz", "dice_2"]
    for logged, part in zip(combined.last_parts.values(), parts):
        assert float(logged) == pytest.approx(float(part), rel=1e-12)
        assert not logged.requires_grad
