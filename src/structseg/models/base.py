"""The common base of all segmentation models: encoder + head, logits at the input resolution."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structseg.models.backbones import Backbone

if TYPE_CHECKING:
    from structseg.data.base import ClassInfo

__all__ = ["SegmentationModel", "FCNHead", "ClassifierHead"]


def _tracing() -> bool:
    """True while torch.export / torch.compile / TorchScript tracing records the model."""
    return bool(torch.compiler.is_compiling() or torch.jit.is_tracing())  # type: ignore[no-untyped-call]


class ClassifierHead(nn.Sequential):
    """A sequential head whose last module is the 1x1 classifier; ``features`` stops before it."""

    def features(self, x: Tensor) -> Tensor:
        last = len(self) - 1
        for i, module in enumerate(self):
            if i == last:
                break
            x = module(x)
        return x

    def classify(self, x: Tensor) -> Tensor:
        return cast(Tensor, self[-1](x))


class FCNHead(ClassifierHead):
    """3x3 conv to ``in_channels // 4``, BN, ReLU, dropout, 1x1 classifier (torchvision's FCNHead)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        inter = max(in_channels // 4, 1)
        super().__init__(
            nn.Conv2d(in_channels, inter, 3, padding=1, bias=False),
            nn.BatchNorm2d(inter),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Conv2d(inter, num_classes, 1),
        )


class SegmentationModel(nn.Module):
    """Encoder (``backbone``) plus head; returns logits (N, K, H, W) at the input size for any H, W.

    Subclasses implement :meth:`decode`. An input whose sides are not multiples of
    ``size_divisor`` is padded at the bottom/right (``pad_mode``) and the logits are cropped back,
    so no caller ever meets a divisibility error. With ``aux=True`` an :class:`FCNHead` on
    ``backbone.aux_level`` gives auxiliary logits through :meth:`forward_train`; ``model(x)`` is always the logits.
    """

    full_resolution_logits: bool = False  # True when decode() already returns logits at the padded input size
    build_args: dict[str, Any] | None = None  # how build_model made it (save_pretrained writes it out)

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        feature_channels: int,
        aux: bool = False,
        size_divisor: int = 1,
        pad_mode: str = "reflect",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.feature_channels = feature_channels
        self.size_divisor = size_divisor
        self.pad_mode = pad_mode
        self.aux_level = backbone.aux_level
        self.aux_classifier = FCNHead(backbone.channels[self.aux_level], num_classes) if aux else None

    def decode(self, features: dict[str, Tensor], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Map backbone features to ``(penultimate features, logits)``; ``size`` is the (padded) input size."""
        raise NotImplementedError

    def _pad(self, x: Tensor) -> Tensor:
        d = self.size_divisor
        if d == 1:
            return x
        h, w = x.shape[-2:]
        ph, pw = (d - h % d) % d, (d - w % d) % d
        mode = self.pad_mode
        if mode == "reflect" and not _tracing() and (ph >= h or pw >= w):
            mode = "replicate"  # reflection needs the pad to be smaller than the side
        return F.pad(x, (0, pw, 0, ph), mode=mode)

    def _to_input(self, logits: Tensor, padded: tuple[int, int], size: tuple[int, int], upsample: bool) -> Tensor:
        """Bring logits to the padded size (unless the head already did) and crop the padding off.

        Decisions depend on the model, never on the input shape, so exported graphs stay valid for all sizes.
        """
        if upsample:
            logits = F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)
        if self.size_divisor > 1:
            logits = logits[..., : size[0], : size[1]]
        return logits

    def _run(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor, tuple[int, int]]:
        size = (x.shape[-2], x.shape[-1])
        x = self._pad(x)
        padded = (x.shape[-2], x.shape[-1])
        features = self.backbone(x)
        penultimate, logits = self.decode(features, padded)
        return features, penultimate, self._to_input(logits, padded, size, not self.full_resolution_logits), padded

    def save_pretrained(self, out_dir: str | Path, *, classes: ClassInfo | None = None) -> Path:
        """Write ``out_dir`` as :func:`structseg.from_pretrained` reads it (``config.json``, ``model.safetensors``,
        a model card). The model must come from :func:`structseg.models.build_model` (which records how it was
        built); ``classes`` name the outputs (default: ``class_0`` ... with VOC colors). Trained runs export with
        ``structseg export --format pretrained``, which also records the data and the metrics."""
        from structseg.data.voc import numbered_classes
        from structseg.engine.config import Config, ModelConfig
        from structseg.engine.predict import Predictor
        from structseg.engine.pretrained import save_pretrained
        from structseg.errors import ConfigError

        args = getattr(self, "build_args", None)
        if args is None:
            raise ConfigError("save_pretrained: this model was not built by structseg.models.build_model")
        if classes is None:
            classes = numbered_classes(self.num_classes)
        cfg = Config(model=ModelConfig(name=args["name"], backbone=args["backbone"], num_classes=self.num_classes,
                                       output_stride=args["output_stride"], aux=args["aux"],
                                       options=dict(args["options"])))
        predictor = Predictor(self, classes, config=cfg)
        predictor.checkpoint = {"which": "model", "iteration": None}
        was_training = self.training
        try:
            return save_pretrained(predictor, out_dir)
        finally:
            self.train(was_training)

    def forward(self, x: Tensor, *, with_aux: bool = False) -> Tensor:
        """Logits (N, K, H, W) at the input size, in any mode. ``with_aux=True`` (training through a
        DistributedDataParallel wrapper, which must see the forward call) returns :meth:`forward_train`'s pair."""
        if with_aux:
            return self.forward_train(x)  # type: ignore[return-value]
        return self._run(x)[2]

    def forward_train(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(logits, aux_logits)`` for training: the auxiliary head's logits at the input size, or None
        without one."""
        features, _, logits, padded = self._run(x)
        if self.aux_classifier is None:
            return logits, None
        size = (logits.shape[-2], logits.shape[-1])
        return logits, self._to_input(self.aux_classifier(features[self.aux_level]), padded, size, True)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """``{"out": logits at input size, "features": penultimate map (N, feature_channels, h, w)}``.

        The feature map covers the input only: rows and columns that see nothing but the padding added
        for ``size_divisor`` are cropped (ceil, so every input pixel keeps its cell).
        """
        _, penultimate, logits, padded = self._run(x)
        if self.size_divisor > 1:
            (hi, wi), (hf, wf) = x.shape[-2:], penultimate.shape[-2:]
            penultimate = penultimate[..., : -(-hf * hi // padded[0]), : -(-wf * wi // padded[1])]
        return {"out": logits, "features": penultimate}
