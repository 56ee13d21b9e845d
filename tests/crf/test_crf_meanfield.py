"""Mean-field objective per iteration.

Asserted: with symmetric PSD kernels (exact normalized Gaussians) and negative
semidefinite compatibilities (Potts, w > 0, written as -w I or as w (1 - I)),
the parallel update is the concave-convex procedure for
F(Q) = <Q, U> + 1/2 sum_m <Q, (k_m Q) mu_m> + <Q, log Q>, so F(Q_t+1) <= F(Q_t)
at every step (up to float64 rounding). A repulsive compatibility breaks the
premise, and F does go up: the check can fail.
"""
from __future__ import annotations

import pytest
import torch
from _crf_helpers import DenseGaussianOperator, noisy_logits, scene

from structseg.crf.kernels import GaussianKernels, bilateral_features, spatial_features
from structseg.crf.meanfield import free_energy, mean_field

H, W, K = 8, 10, 3


def problem():
    image, labels = scene(H, W, seed=11)
    rgb = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float()
    logits = torch.from_numpy(noisy_logits(labels, K, seed=12, noise=2.0)).reshape(K, -1).double()
    unary = -torch.log_softmax(logits, 0)
    features = [spatial_features(1, H, W, 2.0)[0], bilateral_features(rgb, 6.0, 20.0)[0]]
    return rgb, unary, features


def energies(unary, operator, compat, iterations=12):
    trace = []
    mean_field(unary, operator, compat, iterations,
               callback=lambda t, q: trace.append(float(free_energy(unary, q, operator, compat))))
    return torch.tensor(trace, dtype=torch.float64)


@pytest.mark.parametrize(
    "compat",
    [
        [3.0, 10.0],
        [-3.0 * torch.eye(K, dtype=torch.float64), -10.0 * torch.eye(K, dtype=torch.float64)],
        [3.0 * (1 - torch.eye(K, dtype=torch.float64)), 10.0 * (1 - torch.eye(K, dtype=torch.float64))],
    ],
    ids=["potts-weights", "minus-w-identity", "w-one-minus-identity"],
)
def test_free_energy_never_increases_with_exact_kernels(compat):
    _, unary, features = problem()
    trace = energies(unary, DenseGaussianOperator(features), compat)
    steps = trace.diff()
    assert bool((steps <= 1e-9 * trace.abs().max()).all()), steps
    assert trace[-1] < trace[0] - 1.0  # and it actually went down


def test_free_energy_can_increase_with_repulsive_compatibility():
    _, unary, features = problem()
    repulsive = [3.0 * torch.eye(K, dtype=torch.float64), 10.0 * torch.eye(K, dtype=torch.float64)]
    trace = energies(unary, DenseGaussianOperator(features), repulsive)
    assert trace.diff().max() > 1.0


def test_free_energy_with_the_lattice_filter():
    """The lattice filter is PSD and symmetric only approximately: steps may rise by
    float noise only (asserted: by less than 1e-6 of |F|), and F falls overall."""
    rgb, unary, _ = problem()
    kernels = GaussianKernels.dense_crf(rgb, sxy_gaussian=2.0, sxy_bilateral=6.0, srgb=20.0)
    trace = energies(unary, kernels, [3.0, 10.0])
    assert bool((trace.diff() <= 1e-6 * trace.abs().max()).all())
    assert trace[-1] < trace[0] - 1.0


def test_free_energy_of_potts_forms_differ_by_a_constant():
    """-w I and w (1 - I) give the same updates; their objectives differ by a constant."""
    _, unary, features = problem()
    op = DenseGaussianOperator(features)
    eye = torch.eye(K, dtype=torch.float64)
    a = energies(unary, op, [3.0, 10.0])
    b = energies(unary, op, [3.0 * (1 - eye), 10.0 * (1 - eye)])
    offsets = b - a
    assert float(offsets.max() - offsets.min()) < 1e-9 * float(a.abs().max())
