"""Dense CRF as a trainable layer (CRF-as-RNN, Zheng et al. 2015).

Mean-field iterations are unrolled and differentiated: the gradient reaches
the input logits, the per-kernel weights and the label compatibility matrix.
The lattices are built without gradient from the image (they depend on pixel
positions and colors only), once per forward pass.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from structseg.crf.dense import _check_shapes, image_to_rgb255
from structseg.crf.kernels import GaussianKernels
from structseg.crf.meanfield import mean_field_scores
from structseg.crf.params import DenseCRFConfig
from structseg.errors import ConfigError
from structseg.models.wrapper import NetworkWrapper

__all__ = ["CRFRNN", "MeanFieldCRF", "dense_kernels"]


def dense_kernels(image: Tensor, config: DenseCRFConfig, *, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None) -> GaussianKernels:
    """The dense CRF's two kernels (smoothness, appearance) of a batch of network inputs (N, 3, H, W), widths from
    ``config``; a normalized input is de-normalized with ``mean``/``std`` (out-of-range colours clipped)."""
    rgb = image_to_rgb255(image.detach(), mean=mean, std=std, strict=False)
    return GaussianKernels.dense_crf(rgb, sxy_gaussian=config.sxy_gaussian, sxy_bilateral=config.sxy_bilateral,
                                     srgb=config.srgb)


class MeanFieldCRF(nn.Module):
    """``MeanFieldCRF(K)(logits (N, K, H, W), image (N, 3, H, W)) -> refined logits``.

    The output holds the final mean-field scores (log-beliefs up to a per-pixel
    constant), ready for a cross-entropy loss. Kernel weights start at
    ``compat_gaussian`` and ``compat_bilateral`` and the compatibility at Potts
    (``1 - I``), which reproduces :func:`structseg.crf.dense.dense_crf` before training.
    ``image`` is uint8, float in [0, 1], or normalized float with ``mean``/``std``.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        iterations: int = DenseCRFConfig.iterations,
        sxy_gaussian: float = DenseCRFConfig.sxy_gaussian,
        sxy_bilateral: float = DenseCRFConfig.sxy_bilateral,
        srgb: float = DenseCRFConfig.srgb,
        compat_gaussian: float = DenseCRFConfig.compat_gaussian,  # type: ignore[assignment]
        compat_bilateral: float = DenseCRFConfig.compat_bilateral,  # type: ignore[assignment]
        learn_compatibility: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"MeanFieldCRF: num_classes must be a positive integer, got {num_classes!r}")
        self.config = DenseCRFConfig(
            iterations=iterations,
            sxy_gaussian=sxy_gaussian,
            compat_gaussian=compat_gaussian,
            sxy_bilateral=sxy_bilateral,
            srgb=srgb,
            compat_bilateral=compat_bilateral,
        )
        self.num_classes = num_classes
        self.mean, self.std = mean, std
        self.kernel_weights = nn.Parameter(torch.tensor([float(compat_gaussian), float(compat_bilateral)]))
        potts = 1.0 - torch.eye(num_classes)
        if learn_compatibility:
            self.compatibility = nn.Parameter(potts)
        else:
            self.register_buffer("compatibility", potts)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"num_classes={self.num_classes}, iterations={c.iterations}, sxy_gaussian={c.sxy_gaussian}, "
            f"sxy_bilateral={c.sxy_bilateral}, srgb={c.srgb}"
        )

    def kernels(self, image: Tensor) -> GaussianKernels:
        """The fixed (no-gradient) kernels of a batch of images."""
        return dense_kernels(image, self.config, mean=self.mean, std=self.std)

    def forward(self, logits: Tensor, image: Tensor, kernels: GaussianKernels | None = None) -> Tensor:
        """Refined logits (N, K, H, W); pass ``kernels`` to reuse them across calls on the same images."""
        _check_shapes(logits, image, [])
        n, k, h, w = logits.shape
        if k != self.num_classes:
            raise ValueError(f"MeanFieldCRF was built for {self.num_classes} classes, logits have {k}")
        if kernels is None:
            kernels = self.kernels(image.to(logits.device))
        if kernels.num_points != n * h * w:
            raise ValueError(f"kernels cover {kernels.num_points} pixels, logits {n * h * w}")
        compat = [weight * self.compatibility for weight in self.kernel_weights.to(logits.dtype)]
        prior = logits.permute(1, 0, 2, 3).reshape(k, n * h * w)
        scores = mean_field_scores(prior, kernels, [c.to(logits.dtype) for c in compat], self.config.iterations)
        return scores.view(k, n, h, w).permute(1, 0, 2, 3)


class CRFRNN(NetworkWrapper):
    """CRF-as-RNN (Zheng et al. 2015): a segmentation network with a :class:`MeanFieldCRF` on its logits, trained
    end to end; state-dict keys ``base.*`` (the network) and ``crf.*`` (kernel weights, compatibility).

    ``model(x)`` gives the refined logits at the input size (the CRF reads ``x``, normalized with the run's
    ``mean``/``std``); ``forward_train(x)`` gives ``(refined, aux)`` with the network's auxiliary logits. The CRF
    runs in float32 outside autocast. ``backbone`` is the whole network: ``optim.backbone_lr_mult`` scales the
    network's learning rate and ``optim.lr`` is the CRF's own, so a handful of kernel weights and compatibilities
    can move at a rate that would wreck a trained network.
    """

    def __init__(self, base: nn.Module, crf: MeanFieldCRF) -> None:
        super().__init__(base, needs_features=False)
        self.crf = crf

    @property
    def num_classes(self) -> int:
        return self.crf.num_classes

    @property
    def backbone(self) -> nn.Module:
        return self.base

    def refine(self, logits: Tensor, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.crf(logits.float(), x.float().contiguous())

    def forward(self, x: Tensor, *, with_aux: bool = False) -> Tensor:
        if with_aux:
            return self.forward_train(x)  # type: ignore[return-value]
        return self.refine(self.base(x), x)

    def forward_train(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        forward_train = getattr(self.base, "forward_train", None)
        logits, aux = forward_train(x) if forward_train is not None else (self.base(x), None)
        return self.refine(logits, x), aux

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = self.base.forward_features(x)  # type: ignore[operator]
        return {**out, "out": self.refine(out["out"], x)}
