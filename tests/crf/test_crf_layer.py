"""MeanFieldCRF: gradients through the unrolled iterations and the lattice."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _crf_helpers import assert_close, gradient_step, noisy_logits, scene

from structseg.crf import MeanFieldCRF, dense_crf
from structseg.crf.meanfield import mean_field
from structseg.errors import ConfigError

PARAMS = dict(sxy_gaussian=2.0, sxy_bilateral=5.0, srgb=20.0)


def batch(n: int, height: int, width: int, k: int = 3):
    images, logits = [], []
    for i in range(n):
        image, labels = scene(height, width, seed=20 + i)
        images.append(image)
        logits.append(noisy_logits(labels, k, seed=30 + i))
    return torch.from_numpy(np.stack(logits)), torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


def test_initial_layer_equals_dense_crf():
    logits, images = batch(2, 10, 12)
    layer = MeanFieldCRF(3, iterations=4, **PARAMS)
    expected = dense_crf(logits, images, iterations=4, **PARAMS)
    with torch.no_grad():
        assert_close(torch.softmax(layer(logits, images), 1), expected, atol=1e-5)


def test_gradcheck_through_lattice_and_iterations():
    """float64 gradcheck w.r.t. logits, kernel weights and compatibility, with the
    real lattice filter (a fixed linear operator built from the image)."""
    logits, images = batch(1, 4, 5, k=3)
    layer = MeanFieldCRF(3, iterations=3, **PARAMS)
    kernels = layer.kernels(images)

    def run(x, weights, compat):
        unary = -x.permute(1, 0, 2, 3).reshape(3, -1)
        return mean_field(unary, kernels, [w * compat for w in weights], 3)

    inputs = (
        logits.double().requires_grad_(),
        torch.tensor([1.5, 2.5], dtype=torch.float64, requires_grad=True),
        (1 - torch.eye(3, dtype=torch.float64) + 0.1 * torch.rand(3, 3, dtype=torch.float64)).requires_grad_(),
    )
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("n", [1, 3])
def test_parameters_get_gradients_for_any_batch_size(n):
    logits, images = batch(n, 8, 9)
    logits.requires_grad_()
    layer = MeanFieldCRF(3, iterations=3, **PARAMS)
    target = torch.randint(0, 3, (n, 8, 9))
    loss = torch.nn.functional.cross_entropy(layer(logits, images), target)
    loss.backward()
    assert layer.kernel_weights.grad is not None and bool((layer.kernel_weights.grad != 0).all())
    assert layer.compatibility.grad is not None and float(layer.compatibility.grad.abs().sum()) > 0
    assert float(logits.grad.abs().sum()) > 0


def test_training_the_layer_lowers_its_loss():
    logits, images = batch(2, 10, 12)
    _, labels = scene(10, 12, seed=20)
    target = torch.from_numpy(np.stack([labels, scene(10, 12, seed=21)[1]]))
    layer = MeanFieldCRF(3, iterations=3, compat_gaussian=0.5, compat_bilateral=0.5, **PARAMS)  # weak start
    kernels = layer.kernels(images)
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(layer(logits, images, kernels), target)
        loss.backward()
        gradient_step(layer.parameters(), lr=0.3)
        losses.append(float(loss.detach()))
    assert all(b < a for a, b in zip(losses, losses[1:]))
    assert losses[-1] < 0.9 * losses[0]
    assert bool((layer.kernel_weights > 0.5).all())  # it learned to trust the kernels more


def test_fixed_compatibility_is_a_buffer_and_errors_are_clear():
    layer = MeanFieldCRF(4, learn_compatibility=False)
    assert "compatibility" not in dict(layer.named_parameters())
    assert "compatibility" in dict(layer.named_buffers())
    with pytest.raises(ConfigError, match="srgb"):
        MeanFieldCRF(3, srgb=0.0)
    with pytest.raises(ConfigError, match="num_classes"):
        MeanFieldCRF(0)
    logits, images = batch(1, 6, 6)
    with pytest.raises(ValueError, match="4 classes"):
        layer(logits, images)


def test_kernels_cached_under_inference_mode_still_train():
    """Post-processing under ``torch.inference_mode`` caches the spatial lattice of a size; training the
    layer at that size afterwards must still back-propagate."""
    from structseg.crf.kernels import clear_cache

    clear_cache()
    logits, images = batch(1, 7, 11)
    layer = MeanFieldCRF(3, iterations=2, **PARAMS)
    with torch.inference_mode():
        refined = layer(logits, images)
    logits.requires_grad_()
    out = layer(logits, images)
    out.sum().backward()
    assert logits.grad is not None and layer.kernel_weights.grad is not None
    assert_close(out.detach(), refined, atol=1e-6)
