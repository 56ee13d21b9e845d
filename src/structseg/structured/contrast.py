"""Contrast-sensitive Potts rewards on an image's pixel edges, the ssvm head's ``pairwise="contrast"`` form."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from structseg._shapes import spatial_size

__all__ = ["CONTRAST_STEP", "contrast_rewards"]

# The contrast weights are stored divided by this: Adam moves each parameter by about the learning rate per step,
# and these reach values of several logits in the ~100 steps a CPU budget allows, while the unary layer's weights
# move by thousandths at the same rate.
CONTRAST_STEP = 50.0


def contrast_rewards(image: Tensor, size: tuple[int, int], src: Tensor, dst: Tensor, contrast: Tensor, sigma: float,
                     *, constant: bool = True, attractive: bool = False) -> Tensor:
    """Agreement rewards (N, E, K): ``a_c + b_c exp(-|I_i - I_j|^2 / 2 sigma^2)`` per edge ``(src, dst)`` of the
    ``size`` grid, ``(a, b) = CONTRAST_STEP * contrast`` (2, K), ``image`` average-pooled to ``size``.

    ``constant=False`` drops ``a_c``; ``attractive=True`` pays a reward below 0 as 0, with the gradient passed as
    if unclipped, so that weights starting at 0 still move.
    """
    pixels = image.float()
    if spatial_size(pixels) != size:
        pixels = F.adaptive_avg_pool2d(pixels, size)
    pixels = pixels.flatten(2)  # (N, 3, h*w)
    d2 = (pixels[:, :, src] - pixels[:, :, dst]).pow(2).sum(1)  # (N, E)
    kernel = torch.exp(-d2 / (2 * sigma ** 2)).unsqueeze(-1)
    weights = CONTRAST_STEP * contrast
    if attractive:
        weights = torch.where(weights < 0, weights - weights.detach(), weights)
    rewards = kernel * weights[1]
    return weights[0] + rewards if constant else rewards
