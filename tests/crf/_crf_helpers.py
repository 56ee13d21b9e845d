"""Small problems and independent oracles for the CRF tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def scene(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A real-looking RGB image (H, W, 3) uint8: three colored regions with a
    shading gradient and sensor noise, and its label map (H, W) with labels 0..2."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((height, width), np.int64)
    labels[:, width // 2 :] = 1
    labels[height // 4 : 3 * height // 4, width // 3 : 2 * width // 3] = 2
    colors = np.array([(190, 60, 50), (40, 150, 70), (50, 60, 200)], np.float64)
    image = colors[labels]
    image *= np.linspace(0.7, 1.1, width)[None, :, None]
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def camvid_crop(root: Path, height: int, width: int) -> np.ndarray:
    """A crop of the first CamVid validation image (list files carry a foreign prefix:
    only the file name is used)."""
    from PIL import Image

    first = (root / "val.txt").read_text().split()[0]
    image = np.asarray(Image.open(root / "val" / Path(first).name).convert("RGB"))
    return np.ascontiguousarray(image[100 : 100 + height, 150 : 150 + width])


def noisy_logits(labels: np.ndarray, num_classes: int, seed: int = 0, strength: float = 2.0,
                 noise: float = 1.5) -> np.ndarray:
    """(K, H, W) float32 logits: ``strength`` times the one-hot labels plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    onehot = np.eye(num_classes, dtype=np.float32)[labels % num_classes]
    logits = strength * onehot + rng.normal(0, noise, onehot.shape).astype(np.float32)
    return np.ascontiguousarray(logits.transpose(2, 0, 1))


class DenseGaussianOperator:
    """Exact O(P^2) normalized Gaussian kernels ``D^-1/2 K D^-1/2`` (test oracle).

    Each kernel matrix is symmetric positive semidefinite (a Gaussian Gram matrix,
    congruently scaled)."""

    def __init__(self, features: list[torch.Tensor]) -> None:
        self.mats = []
        for f in features:
            f = f.to(torch.float64)
            k = torch.exp(-0.5 * torch.cdist(f, f) ** 2)
            norm = k.sum(1).rsqrt()
            self.mats.append(norm[:, None] * k * norm[None, :])
        self.num_kernels = len(self.mats)

    def apply(self, values: torch.Tensor, weights) -> torch.Tensor:
        return sum(w * (m.to(values.dtype) @ values) for w, m in zip(weights, self.mats))

    def apply_each(self, values: torch.Tensor) -> list[torch.Tensor]:
        return [m.to(values.dtype) @ values for m in self.mats]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    """Same shape and max |actual - expected| <= atol (lighter than torch.testing, which
    imports much of torch._refs on first use)."""
    assert actual.shape == expected.shape, f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}"
    diff = (actual.to(torch.float64) - expected.to(torch.float64)).abs().max().item()
    assert diff <= atol, f"max abs difference {diff:.3g} > {atol:.3g}"


def gradient_step(parameters, lr: float) -> None:
    """Plain gradient descent step (torch.optim's first step imports much of torch._dynamo)."""
    with torch.no_grad():
        for p in parameters:
            if p.grad is not None:
                p -= lr * p.grad
                p.grad = None
