"""The two Gaussian kernels of the dense CRF as one normalized filter.

Kernel features follow Krähenbühl & Koltun (2011) and pydensecrf: the
appearance (bilateral) kernel uses ``(x/sxy, y/sxy, r/srgb, g/srgb, b/srgb)``,
the smoothness (spatial) kernel ``(x/sxy, y/sxy)``, with ``x`` the column and
colors in 0..255. Each kernel is normalized symmetrically,
``D^-1/2 K D^-1/2`` with ``D = diag(K 1)``, as pydensecrf does by default.
The spatial lattice depends only on the image size, so it is cached.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from structseg.crf.permutohedral import PermutohedralLattice, build_lattice

__all__ = ["spatial_features", "bilateral_features", "NormalizedKernel", "GaussianKernels", "clear_cache"]

_SPATIAL_CACHE: OrderedDict[tuple, NormalizedKernel] = OrderedDict()
_SPATIAL_CACHE_SIZE = 4


def clear_cache() -> None:
    """Forget cached spatial lattices (they are rebuilt on demand)."""
    _SPATIAL_CACHE.clear()


def _grid(batch: int, height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
    ys = torch.arange(height, dtype=torch.float32, device=device)
    xs = torch.arange(width, dtype=torch.float32, device=device)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return xx.expand(batch, height, width), yy.expand(batch, height, width)


def spatial_features(batch: int, height: int, width: int, sxy: float, device: torch.device | str = "cpu") -> Tensor:
    """(B, H*W, 2) features ``(x/sxy, y/sxy)`` of the smoothness kernel."""
    xx, yy = _grid(batch, height, width, torch.device(device))
    return torch.stack([xx / sxy, yy / sxy], 1).view(batch, 2, height * width).transpose(1, 2)


def bilateral_features(image: Tensor, sxy: float, srgb: float) -> Tensor:
    """(B, H*W, 5) features ``(x/sxy, y/sxy, r/srgb, g/srgb, b/srgb)`` of the appearance
    kernel; ``image`` is float (B, 3, H, W) with colors in 0..255."""
    batch, _, height, width = image.shape
    xx, yy = _grid(batch, height, width, image.device)
    color = image.to(torch.float32) / srgb
    feats = torch.cat([(xx / sxy).unsqueeze(1), (yy / sxy).unsqueeze(1), color], 1)
    return feats.view(batch, 5, height * width).transpose(1, 2)  # channel-major storage, as the lattice reads it


class NormalizedKernel:
    """One Gaussian kernel, symmetrically normalized: ``v -> D^-1/2 K D^-1/2 v``.

    The normalization is folded into the splat and slice weights; weights for a
    given dtype and scale are cached, so repeated filtering costs only the lattice
    passes."""

    def __init__(self, lattice: PermutohedralLattice) -> None:
        self.lattice = lattice
        ones = torch.ones(lattice.num_points, 1, device=lattice.device)
        self.norm = lattice.filter(ones)[:, 0].add_(1e-20).rsqrt_()
        self._splat = lattice.splat_weight * self.norm.index_select(0, lattice.splat_points)
        self._cache: dict[tuple, Tensor] = {}

    @property
    def num_points(self) -> int:
        return self.lattice.num_points

    def slice_weight(self, scale: float, dtype: torch.dtype) -> Tensor:
        """Slice weights (P, d+1) with the normalization and ``scale`` folded in."""
        key = ("slice", dtype, float(scale))
        if key not in self._cache:
            if len(self._cache) > 8:  # cached kernels live on; keep their weights bounded
                self._cache.clear()
            with torch.inference_mode(False):  # a cached tensor may later be saved for backward
                self._cache[key] = (self.lattice.slice_weight * (self.norm * scale)[:, None]).to(dtype)
        return self._cache[key]

    def blurred(self, values: Tensor) -> Tensor:
        """Normalized splat and blur of (P, C) values: lattice values (M + 1, C)."""
        key = ("splat", values.dtype)
        if key not in self._cache:
            with torch.inference_mode(False):
                self._cache[key] = self._splat.to(values.dtype)
        lat = self.lattice
        return lat.blur(lat.splat(values, self._cache[key]))

    def __call__(self, values: Tensor, scale: float = 1.0) -> Tensor:
        """``scale * k(values)`` for (P, C) values."""
        return self.lattice.slice(self.blurred(values), self.slice_weight(scale, values.dtype))


def _spatial_kernel(batch: int, height: int, width: int, sxy: float, device: torch.device) -> NormalizedKernel:
    key = (batch, height, width, float(sxy), str(device))
    if key in _SPATIAL_CACHE:
        _SPATIAL_CACHE.move_to_end(key)
        return _SPATIAL_CACHE[key]
    with torch.inference_mode(False):  # cached: built under inference mode, it could not serve training later
        kernel = NormalizedKernel(build_lattice(spatial_features(batch, height, width, sxy, device)))
    _SPATIAL_CACHE[key] = kernel
    while len(_SPATIAL_CACHE) > _SPATIAL_CACHE_SIZE:
        _SPATIAL_CACHE.popitem(last=False)
    return kernel


class GaussianKernels:
    """Normalized Gaussian kernels ``k_m`` of one batch of images.

    Point values are (P, C) with P = B*H*W in (image, row, column) order.
    ``apply(values, weights)`` returns ``sum_m weights[m] * k_m(values)`` with one
    slice for all kernels (their blurred lattices side by side); ``apply_each(values)``
    returns every ``k_m(values)``.
    """

    def __init__(self, kernels: Sequence[NormalizedKernel]) -> None:
        if not kernels or len({k.num_points for k in kernels}) != 1:
            raise ValueError("GaussianKernels needs one or more kernels on the same points")
        self.kernels = list(kernels)
        self.num_kernels = len(self.kernels)
        self.num_points = self.kernels[0].num_points
        self._merged: dict[tuple[Any, ...] | str, Tensor] = {}

    @classmethod
    def dense_crf(cls, image: Tensor, *, sxy_gaussian: float, sxy_bilateral: float, srgb: float) -> GaussianKernels:
        """Kernels ``[spatial, bilateral]`` of images (B, 3, H, W), colors in 0..255."""
        with torch.no_grad():
            batch, _, height, width = image.shape
            spatial = _spatial_kernel(batch, height, width, sxy_gaussian, image.device)
            bilateral = NormalizedKernel(build_lattice(bilateral_features(image, sxy_bilateral, srgb)))
            return cls([spatial, bilateral])

    def apply(self, values: Tensor, weights: Sequence[float]) -> Tensor:
        """``sum_m weights[m] * k_m(values)`` for (P, C) values; weights are plain numbers."""
        if len(weights) != self.num_kernels:
            raise ValueError(f"expected {self.num_kernels} kernel weights, got {len(weights)}")
        if self.num_kernels == 1:
            return self.kernels[0](values, weights[0])
        table = torch.cat([kernel.blurred(values) for kernel in self.kernels])
        if "index" not in self._merged:
            offsets, start = [], 0
            for kernel in self.kernels:
                offsets.append(kernel.lattice.slice_index + start)
                start += kernel.lattice.num_vertices + 1
            self._merged["index"] = torch.cat(offsets, 1)
        key = (values.dtype, tuple(float(w) for w in weights))
        if key not in self._merged:
            merged = torch.empty(self._merged["index"].shape, dtype=values.dtype, device=values.device)
            start = 0
            for kernel, w in zip(self.kernels, weights):
                lat = kernel.lattice
                stop = start + lat.slice_weight.shape[1]
                torch.mul(lat.slice_weight, (kernel.norm * w)[:, None], out=merged[:, start:stop])
                start = stop
            self._merged[key] = merged
        return torch.nn.functional.embedding_bag(
            self._merged["index"], table, mode="sum", per_sample_weights=self._merged[key]
        )

    def apply_each(self, values: Tensor) -> list[Tensor]:
        """``[k_m(values) for each kernel m]`` for (P, C) values."""
        return [kernel(values) for kernel in self.kernels]
