"""Gradients of every loss checked numerically (torch.autograd.gradcheck, float64, tiny inputs).

fast_mode compares random projections of the analytical and numerical Jacobians:
the same check at a fraction of the cost on two shared cores.
"""
from __future__ import annotations

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
    list_losses,
)

K, IGNORE = 3, 255
WEIGHTS = [0.5, 2.0, 1.0]


def make_input(seed: int, n: int = 2, h: int = 2, w: int = 3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, K, h, w, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, K, (n, h, w), generator=g)
    target[0, 0, 0] = IGNORE
    return logits, target


LOSSES = {
    "cross_entropy": lambda: CrossEntropyLoss(K, label_smoothing=0.1, class_weights=WEIGHTS),
    "focal": lambda: FocalLoss(K, gamma=2.0, alpha=[0.2, 0.3, 0.5], class_weights=WEIGHTS),
    "focal_gamma_1.5": lambda: FocalLoss(K, gamma=1.5),
    "dice": lambda: DiceLoss(K, class_weights=WEIGHTS),
    "dice_per_image_all": lambda: DiceLoss(K, classes="all", per_image=True),
    "soft_iou": lambda: SoftIoULoss(K, class_weights=WEIGHTS),
    "lovasz": lambda: LovaszSoftmaxLoss(K, class_weights=WEIGHTS),
    "lovasz_per_image_all": lambda: LovaszSoftmaxLoss(K, classes="all", per_image=True),
    "ohem": lambda: OhemCrossEntropyLoss(K, thresh=0.5, min_kept=4, class_weights=WEIGHTS),
    "kl": lambda: KLDivergenceLoss(K, temperature=2.0, class_weights=WEIGHTS),
}


def _no_ties(logits: torch.Tensor, target: torch.Tensor, gap: float = 1e-4) -> bool:
    """Lovász sorts pixel errors and OHEM thresholds probabilities: keep them well apart."""
    prob = F.softmax(logits.detach(), 1)
    fg = F.one_hot(target.clamp_max(K - 1), K).permute(0, 3, 1, 2).double()
    errors = (fg - prob).abs().movedim(1, -1).reshape(-1, K)
    sorted_errors = errors.sort(0).values
    p_true = prob.gather(1, target.clamp_max(K - 1).unsqueeze(1)).flatten()
    return bool((sorted_errors.diff(dim=0) > gap).all()) and bool(((p_true - 0.5).abs() > gap).all())


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradcheck(name):
    seed = 0
    logits, target = make_input(seed)
    while not _no_ties(logits, target):
        seed += 1
        logits, target = make_input(seed)
    loss = LOSSES[name]()
    assert torch.autograd.gradcheck(lambda x: loss(x, target), (logits,), eps=1e-6, atol=1e-5, fast_mode=True)


def test_gradcheck_kl_soft_target():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, K, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    q = torch.softmax(torch.randn(1, K, 2, 3, generator=g, dtype=torch.float64), 1)
    q[0, :, 0, 1] = 0.0
    loss = KLDivergenceLoss(K)
    assert torch.autograd.gradcheck(lambda x: loss(x, q), (logits,), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("name", list_losses())
def test_ignored_pixels_get_no_gradient_and_all_ignored_gives_zero(name):
    logits, target = make_input(5)
    loss = build_loss(name, num_classes=K, ignore_index=IGNORE)
    loss(logits, target).backward()
    assert torch.all(logits.grad[0, :, 0, 0] == 0)
    assert logits.grad.abs().sum() > 0

    logits.grad = None
    value = loss(logits, torch.full_like(target, IGNORE))
    value.backward()
    assert float(value.detach()) == 0.0
    assert torch.all(logits.grad == 0)


@pytest.mark.parametrize("name", list_losses())
def test_bfloat16_logits_are_computed_in_float32(name):
    logits, target = make_input(6)
    loss = build_loss(name, num_classes=K)
    low = loss(logits.detach().to(torch.bfloat16), target)
    assert low.dtype == torch.float32
    assert float(low) == pytest.approx(float(loss(logits.detach().to(torch.bfloat16).double(), target)), rel=1e-5)
