"""Fully connected CRF with Gaussian edge potentials (Krähenbühl & Koltun 2011).

``dense_crf(unary, image)`` refines per-pixel class scores of a batch of images
with a smoothness kernel (spatial Gaussian) and an appearance kernel
(bilateral), by mean-field inference on a permutohedral lattice. Parameters and
results match pydensecrf's ``DenseCRF2D`` with ``addPairwiseGaussian`` and
``addPairwiseBilateral``.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Literal

import torch
from torch import Tensor

from structseg.crf.kernels import GaussianKernels
from structseg.crf.meanfield import Compatibility, mean_field_scores
from structseg.crf.params import DenseCRFConfig

__all__ = ["DenseCRFConfig", "DenseCRF", "dense_crf", "refine", "DenseCRFRefiner", "image_to_rgb255"]

InputType = Literal["auto", "logits", "probs"]


def image_to_rgb255(
    image: Tensor,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    strict: bool = True,
) -> Tensor:
    """Colors in 0..255 as float32 from uint8 images, float images in [0, 1], or
    normalized float images when ``mean`` and ``std`` (in 0..1 units) are given. Values outside [0, 1] are an
    error (a wrong normalization), or with ``strict=False`` clipped (a layer inside a network, which sees
    whatever the network is fed: probes, augmented batches)."""
    if image.dtype == torch.uint8:
        return image.to(torch.float32)
    if not image.is_floating_point():
        raise ValueError(f"image must be uint8 or float, got dtype {image.dtype}")
    image = image.to(torch.float32)
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std to de-normalize the image, or neither")
    if mean is not None:
        shape = (1, -1, 1, 1) if image.dim() == 4 else (-1, 1, 1)
        m = torch.as_tensor(mean, dtype=torch.float32, device=image.device).view(shape)
        s = torch.as_tensor(std, dtype=torch.float32, device=image.device).view(shape)
        image = image * s + m
    low, high = float(image.min()), float(image.max())
    if strict and (low < -1e-3 or high > 1 + 1e-3):
        raise ValueError(
            f"float image values span [{low:.3g}, {high:.3g}], expected [0, 1]: pass uint8 colors, "
            "or mean/std to undo a normalization"
        )
    return image.clamp(0, 1) * 255.0


def _all_finite(x: Tensor) -> bool:
    """NaN and infinities reach the extremes: two reductions instead of a mask."""
    return bool(torch.isfinite(x.amax())) and bool(torch.isfinite(x.amin()))


def _unary_scores(unary: Tensor, input_type: InputType) -> Tensor:
    """(N, K, H, W) logits or probabilities -> scores ``log p`` up to a per-pixel constant
    (logits are used as they are)."""
    if not _all_finite(unary):
        raise ValueError("unary contains NaN or infinite values")
    if input_type not in ("auto", "logits", "probs"):
        raise ValueError(f"input_type must be 'auto', 'logits' or 'probs', got {input_type!r}")
    if input_type == "auto":
        is_probs = bool(unary.min() >= 0) and bool(unary.max() <= 1) and bool(((unary.sum(1) - 1).abs() < 1e-3).all())
        input_type = "probs" if is_probs else "logits"
    if input_type == "logits":
        return unary
    if bool(unary.min() < 0) or not bool(((unary.sum(1) - 1).abs() < 1e-3).all()):
        raise ValueError("unary given as probabilities must be >= 0 and sum to 1 over the class dimension")
    return torch.log(unary.clamp_min(1e-8))


@contextmanager
def _intra_op_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op threads, restoring torch's setting afterwards."""
    if threads is None or threads == torch.get_num_threads():
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_shapes(unary: Tensor, image: Tensor, compat: Sequence[Compatibility]) -> None:
    if unary.dim() != 4:
        raise ValueError(f"unary must be (N, K, H, W) or (K, H, W), got shape {tuple(unary.shape)}")
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be (N, 3, H, W) or (3, H, W) RGB, got shape {tuple(image.shape)}")
    n, k, h, w = unary.shape
    if image.shape[0] != n:
        raise ValueError(f"batch sizes differ: unary has {n} items, image has {image.shape[0]}")
    if image.shape[2:] != unary.shape[2:]:
        raise ValueError(
            f"sizes differ: unary is {h}x{w} (HxW) but image is {image.shape[2]}x{image.shape[3]}"
        )
    for name, c in zip(("compat_gaussian", "compat_bilateral"), compat):
        if isinstance(c, Tensor) and c.shape[0] != k:
            raise ValueError(f"{name} is {c.shape[0]}x{c.shape[1]} but the unary has K={k} classes")


class DenseCRF:
    """Dense CRF post-processing with fixed parameters.

    ``DenseCRF(config)(unary, image)`` returns refined probabilities (N, K, H, W).
    """

    def __init__(self, config: DenseCRFConfig | Mapping[str, Any] | None = None, **overrides: Any) -> None:
        if config is None or isinstance(config, Mapping):
            config = DenseCRFConfig.from_dict({**dict(config or {}), **overrides})
        elif overrides:
            config = replace(config, **overrides)
        self.config = config

    def kernels(self, image: Tensor) -> GaussianKernels:
        """The normalized spatial + bilateral kernels of images (N, 3, H, W), colors 0..255."""
        c = self.config
        return GaussianKernels.dense_crf(
            image, sxy_gaussian=c.sxy_gaussian, sxy_bilateral=c.sxy_bilateral, srgb=c.srgb
        )

    def scores(self, unary: Tensor, image: Tensor, *, input_type: InputType = "auto") -> Tensor:
        """Final mean-field scores (N, K, H, W): log-beliefs up to a per-pixel constant."""
        single = unary.dim() == 3
        if single:
            unary, image = unary.unsqueeze(0), image.unsqueeze(0)
        out = self._scores(unary, image, input_type).permute(1, 0, 2, 3)
        return out[0] if single else out

    def _scores(self, unary: Tensor, image: Tensor, input_type: InputType) -> Tensor:
        """Final scores as (K, N, H, W) for batched (N, K, H, W) inputs."""
        compat = self.config.compatibilities()
        _check_shapes(unary, image, compat)
        rgb = image_to_rgb255(image.to(unary.device))
        prior = _unary_scores(unary.to(torch.float32), input_type)
        n, k, h, w = prior.shape
        threads = self.config.threads if prior.device.type == "cpu" else None
        with torch.no_grad(), _intra_op_threads(threads):
            kernels = self.kernels(rgb)
            flat = prior.permute(1, 0, 2, 3).reshape(k, n * h * w)
            scores = mean_field_scores(flat, kernels, compat, self.config.iterations)
        return scores.view(k, n, h, w)

    def __call__(self, unary: Tensor, image: Tensor, *, input_type: InputType = "auto") -> Tensor:
        """Refined probabilities, same shape as ``unary``."""
        single = unary.dim() == 3
        if single:
            unary, image = unary.unsqueeze(0), image.unsqueeze(0)
        # softmax over the leading label dimension of (K, N*H*W) is the fast layout on CPU
        probs = torch.softmax(self._scores(unary, image, input_type), 0).permute(1, 0, 2, 3)
        return probs[0] if single else probs.contiguous()


def dense_crf(unary: Tensor, image: Tensor, *, input_type: InputType = "auto", **params: Any) -> Tensor:
    """Refine ``unary`` logits or probabilities (N, K, H, W) of RGB ``image`` (N, 3, H, W)
    (uint8, or float in [0, 1]); returns probabilities (N, K, H, W).

    ``params`` are :class:`~structseg.crf.params.DenseCRFConfig`'s fields (``iterations``, ``sxy_gaussian``,
    ``compat_gaussian``, ``sxy_bilateral``, ``srgb``, ``compat_bilateral``), its defaults for the rest.
    ``input_type="auto"`` takes the unary as probabilities when it is non-negative and sums to 1 over K,
    else as logits.
    """
    return DenseCRF(DenseCRFConfig(**params))(unary, image, input_type=input_type)


class DenseCRFRefiner:
    """Post-processing step for evaluation and prediction: ``refiner(logits, images) -> probs``.

    ``mean``/``std`` undo the normalization of float images (e.g. ImageNet's);
    uint8 images are used as they are.
    """

    def __init__(
        self,
        config: DenseCRFConfig | Mapping[str, Any] | None = None,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        self.crf = DenseCRF(config)
        self.mean, self.std = mean, std

    def __call__(self, logits: Tensor, images: Tensor) -> Tensor:
        if images.is_floating_point():
            images = image_to_rgb255(images, mean=self.mean, std=self.std).div_(255.0)
        return self.crf(logits, images, input_type="logits")


def refine(
    logits: Tensor,
    images: Tensor,
    config: DenseCRFConfig | Mapping[str, Any] | None = None,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Tensor:
    """Dense-CRF refinement of model logits (N, K, H, W) given images (N, 3, H, W);
    returns probabilities (N, K, H, W). See :class:`DenseCRFRefiner`."""
    return DenseCRFRefiner(config, mean=mean, std=std)(logits, images)
