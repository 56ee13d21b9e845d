"""Shape helpers shared across subpackages."""
from __future__ import annotations

from torch import Tensor


def spatial_size(x: Tensor) -> tuple[int, int]:
    """``(height, width)`` of a tensor's last two dimensions, as Python ints."""
    return int(x.shape[-2]), int(x.shape[-1])
