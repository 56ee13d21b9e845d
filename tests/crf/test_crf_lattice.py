"""Permutohedral lattice against brute-force O(P^2) Gaussian filtering."""
from __future__ import annotations

import pytest
import torch
from _crf_helpers import DenseGaussianOperator, assert_close, scene

from structseg.crf.kernels import GaussianKernels, bilateral_features, spatial_features
from structseg.crf.permutohedral import build_lattice
from structseg.errors import SolverError


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float((approx.double() - exact.double()).norm() / exact.double().norm())


def kernels_and_features(height: int, width: int, *, sxy_g: float, sxy_b: float, srgb: float):
    image, _ = scene(height, width, seed=3)
    rgb = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float()
    kernels = GaussianKernels.dense_crf(rgb, sxy_gaussian=sxy_g, sxy_bilateral=sxy_b, srgb=srgb)
    features = [spatial_features(1, height, width, sxy_g)[0], bilateral_features(rgb, sxy_b, srgb)[0]]
    return kernels, features


# The lattice (like pydensecrf's) approximates the Gaussian piecewise-linearly; the
# error grows with the dimension. Measured here: 1.5% relative (d=2), 3.5% (d=5, where
# the effective kernel is about 1.25x wider than nominal).
@pytest.mark.parametrize("kernel, tolerance, wider_by", [(0, 0.02, 1.5), (1, 0.05, 2.0)])
def test_normalized_filter_matches_brute_force(kernel, tolerance, wider_by):
    kernels, features = kernels_and_features(14, 18, sxy_g=2.0, sxy_b=6.0, srgb=25.0)
    torch.manual_seed(0)
    values = torch.rand(14 * 18, 4)
    approx = kernels.apply_each(values)[kernel]
    exact = DenseGaussianOperator([features[kernel]]).apply_each(values.double())[0]
    error = relative_error(approx, exact)
    assert error <= tolerance
    # the comparison can tell kernel widths apart: a wider Gaussian is much further off
    wider = DenseGaussianOperator([features[kernel] / wider_by]).apply_each(values.double())[0]
    assert error < 0.5 * relative_error(wider, exact)


@pytest.mark.parametrize("d", [1, 2, 3, 5])
def test_unnormalized_filter_matches_gaussian_on_dense_points(d):
    """Points dense relative to the kernel width: the lattice follows the Gaussian up to scale."""
    torch.manual_seed(d)
    points = torch.rand(400, d) * torch.tensor([3.0, 3.0, 2.0, 1.5, 1.5][:d])
    values = torch.rand(400, 2)
    approx = build_lattice(points).filter(values).double()
    exact = torch.exp(-0.5 * torch.cdist(points.double(), points.double()) ** 2) @ values.double()
    scale = (approx * exact).sum() / (approx * approx).sum()
    assert relative_error(scale * approx, exact) <= {1: 0.03, 2: 0.04, 3: 0.06, 5: 0.12}[d]


def test_barycentric_weights_are_a_partition_of_unity():
    torch.manual_seed(1)
    lattice = build_lattice(torch.randn(2, 300, 5) * 3)
    assert lattice.slice_weight.min() >= -1e-6
    assert_close(lattice.slice_weight.sum(1), torch.ones(600), atol=1e-5)
    assert lattice.slice_index.max() < lattice.num_vertices
    # every vertex is touched by some point, and no two corners of a point coincide
    assert torch.unique(lattice.slice_index).numel() == lattice.num_vertices
    assert bool((lattice.slice_index.sort(1).values.diff(dim=1) > 0).all())


def test_batch_items_do_not_share_vertices():
    torch.manual_seed(2)
    a, b = torch.rand(50, 3) * 2, torch.rand(60, 3) * 2 + 0.5
    values = torch.rand(100, 3)
    batched = build_lattice(torch.stack([a, b[:50]]))
    out = batched.filter(values)
    assert_close(out[:50], build_lattice(a).filter(values[:50]), atol=1e-5)
    assert_close(out[50:], build_lattice(b[:50]).filter(values[50:]), atol=1e-5)
    # identical items share no vertex either
    twins = build_lattice(torch.stack([a, a]))
    first = twins.slice_index[:50].unique()
    second = twins.slice_index[50:].unique()
    assert not bool(torch.isin(first, second).any())


def test_lattice_rejects_bad_features():
    with pytest.raises(SolverError, match="NaN"):
        build_lattice(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(SolverError, match="too large"):
        build_lattice(torch.tensor([[0.0] * 8, [1e6] * 8]))
