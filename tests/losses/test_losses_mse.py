"""MSE against one-hot targets (the Brier score on probabilities, or least squares on logits)."""
from __future__ import annotations

import pytest
import torch

from structseg.errors import ConfigError
from structseg.losses import MSELoss, build_loss

K, IGNORE = 3, 255


def _naive(scores: torch.Tensor, target: torch.Tensor, weights: list[float] | None) -> float:
    num = den = 0.0
    n, k, h, w = scores.shape
    for i in range(n):
        for y in range(h):
            for x in range(w):
                t = int(target[i, y, x])
                if t == IGNORE:
                    continue
                onehot = torch.zeros(k, dtype=scores.dtype)
                onehot[t] = 1
                wt = 1.0 if weights is None else weights[t]
                num += wt * float(((scores[i, :, y, x] - onehot) ** 2).sum())
                den += wt
    return num / den


@pytest.mark.parametrize("on", ["probs", "logits"])
@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 0.5]])
def test_value_equals_the_definition(on: str, weights: list[float] | None) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, K, 3, 4, generator=g, dtype=torch.float64)
    target = torch.randint(0, K, (2, 3, 4), generator=g)
    target[0, 0, :2] = IGNORE
    loss = MSELoss(K, on=on, ignore_index=IGNORE, class_weights=weights)(logits, target)
    scores = logits.softmax(1) if on == "probs" else logits
    assert float(loss) == pytest.approx(_naive(scores, target, weights), rel=1e-12)


def test_perfect_probabilities_give_zero_and_it_trains() -> None:
    target = torch.randint(0, K, (1, 4, 4), generator=torch.Generator().manual_seed(1))
    confident = 50.0 * torch.nn.functional.one_hot(target, K).permute(0, 3, 1, 2).double()
    assert float(MSELoss(K)(confident, target)) < 1e-12
    logits = torch.zeros(1, K, 4, 4, requires_grad=True)
    loss_fn = build_loss({"name": "mse", "on": "probs"}, num_classes=K)
    first = float(loss_fn(logits, target))
    loss_fn(logits, target).backward()
    with torch.no_grad():
        logits -= 10 * logits.grad
    assert float(loss_fn(logits, target)) < first
    with pytest.raises(ConfigError, match="on"):
        MSELoss(K, on="labels")
