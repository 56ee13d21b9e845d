"""Prediction with a trained model: :class:`Predictor`."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from structseg.data.base import ClassInfo
from structseg.engine.config import Config, CRFConfig, EvalConfig, apply_overrides, load_config
from structseg.errors import ConfigError, DataError

if TYPE_CHECKING:
    from structseg.metrics import SegMetrics
    from structseg.models.fastpath import FastPath

ImageInput = torch.Tensor | np.ndarray | str | Path


def _as_tensor(image: ImageInput) -> torch.Tensor:
    """A file or array as a tensor; ``(H, W, 3)`` arrays become ``(3, H, W)``."""
    if isinstance(image, (str, Path)):
        from structseg.data.io import read_image

        return read_image(image)
    if isinstance(image, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(image))
        if tensor.dim() == 3 and tensor.shape[-1] in (1, 3) and tensor.shape[0] not in (1, 3):
            tensor = tensor.permute(2, 0, 1)
        return tensor
    return image


class Predictor:
    """A trained model with its classes and test-time settings.

    ``predict(image)`` takes an image file, a uint8 ``(3, H, W)`` / ``(H, W, 3)``
    tensor or array, or an already normalized float ``(3, H, W)`` tensor, and
    returns the label map ``(H, W)`` at the image's own size. With ``crf.mode``
    ``"dense"`` the probabilities are refined by the dense CRF against the image.
    """

    def __init__(
        self,
        model: nn.Module,
        classes: ClassInfo,
        *,
        eval_cfg: EvalConfig | None = None,
        device: torch.device | str = "cpu",
        fast_path: FastPath | None = None,
        config: Config | None = None,
        crf: CRFConfig | None = None,
    ) -> None:
        from structseg.engine.evaluate import build_refiner

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.classes = classes
        self.eval_cfg = eval_cfg or EvalConfig()
        self.fast_path = fast_path
        self.config = config
        self.crf = crf or CRFConfig()
        from structseg.engine.build import eval_transform, normalization

        self.checkpoint: dict[str, Any] = {}  # path, which (best / latest / a file's stem), iteration
        self.normalization = normalization(config)
        self.refiner = build_refiner(self.crf, self.normalization)
        self._transform = eval_transform(config)

    # ----------------------------------------------------------- loading

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        config: Config | str | Path | None = None,
        *,
        overrides: Sequence[str] = (),
        device: str = "auto",
        eval_cfg: EvalConfig | None = None,
        crf: CRFConfig | None = None,
        prepare: bool = True,
    ) -> Predictor:
        """Rebuild the model of a checkpoint (read once): its own stored config with ``overrides`` applied,
        unless ``config`` is given; ``eval_cfg`` and ``crf`` default to that config's sections. ``prepare=False``
        keeps the plain model (no BatchNorm folding, no memory format): what an export of the weights needs."""
        from structseg.engine.build import build_model_from_config, fast_path_for, num_classes_for
        from structseg.engine.checkpoint import (
            classes_from_dict,
            config_of_checkpoint,
            load_checkpoint,
            load_model_state,
        )
        from structseg.engine.distributed import resolve_device

        ckpt = load_checkpoint(path)
        if isinstance(config, (str, Path)):
            config = load_config(config)
        cfg = config if config is not None else apply_overrides(config_of_checkpoint(ckpt), list(overrides))
        if "classes" in ckpt:
            classes = classes_from_dict(ckpt["classes"])
        else:
            from structseg.engine.build import build_eval_dataset

            classes = build_eval_dataset(cfg).classes
        # the checkpoint holds every weight: nothing is downloaded or read for model.weights / init_from
        build_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, weights=None, init_from=None))
        model = build_model_from_config(build_cfg, num_classes_for(cfg, classes), classes.ignore_index)
        load_model_state(model, ckpt["model"], source=f"checkpoint {path}")
        dev = resolve_device(device)
        fast = fast_path_for(cfg, dev)
        model = fast.prepare_inference(model.to(dev).eval()) if prepare else model.to(dev).eval()
        predictor = cls(model, classes, eval_cfg=eval_cfg or cfg.eval, device=dev, fast_path=fast, config=cfg,
                        crf=crf or cfg.crf)
        predictor.checkpoint = {"path": str(path), "which": Path(path).stem, "iteration": ckpt.get("iteration")}
        return predictor

    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: str = "best", *, device: str = "auto",
                 eval_cfg: EvalConfig | None = None, crf: CRFConfig | None = None,
                 prepare: bool = True) -> Predictor:
        """The ``best`` (or ``latest``) checkpoint of a run directory, with the run's config; a directory that
        :func:`structseg.engine.pretrained.save_pretrained` wrote is read as such."""
        from structseg.engine.pretrained import from_pretrained, is_pretrained_dir
        from structseg.engine.rundir import existing_run

        if is_pretrained_dir(run_dir):
            return from_pretrained(run_dir, device=device)
        run = existing_run(run_dir)
        return cls.from_checkpoint(run.checkpoint(checkpoint), load_config(run.config), device=device,
                                   eval_cfg=eval_cfg, crf=crf, prepare=prepare)

    # --------------------------------------------------------- evaluation

    def evaluate(self, loader: Iterable[Sequence[torch.Tensor]], *, progress: bool = False,
                 desc: str = "eval") -> SegMetrics:
        """Confusion-matrix metrics over ``loader``'s (normalized image, mask) batches with this predictor's
        test-time settings and refinement."""
        from structseg.engine.evaluate import evaluate_model

        return evaluate_model(self.model, loader, self.classes.num_classes, ignore_index=self.classes.ignore_index,
                              cfg=self.eval_cfg, device=self.device, fast_path=self.fast_path, progress=progress,
                              crf=self.refiner, desc=desc + (" +crf" if self.refiner else ""))

    def write_evaluation(self, metrics: SegMetrics, split: str, path: str | Path) -> tuple[Path, Path]:
        """``path`` (JSON: split, eval and crf settings, every metric per class) and the confusion matrix as a
        PNG beside it; returns both paths."""
        import json

        from structseg.metrics.plots import plot_confusion

        names = list(self.classes.names)
        path = Path(path)
        result = {"split": split, "checkpoint": self.checkpoint, "eval": vars(self.eval_cfg), "crf": vars(self.crf),
                  **metrics.as_dict(names)}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2), encoding="utf-8")
        png = plot_confusion(metrics.confusion, names, path.with_suffix(".png"), title=f"confusion, {split}")
        return path, png

    # --------------------------------------------------------- inference

    def preprocess(self, image: ImageInput) -> torch.Tensor:
        """Normalized float ``(3, H, W)``."""
        tensor = _as_tensor(image)
        if tensor.dim() != 3 or tensor.shape[0] != 3:
            raise DataError(f"predict: expected an RGB image (3, H, W), got shape {tuple(tensor.shape)}")
        if tensor.dtype == torch.uint8:
            dummy = torch.zeros(tensor.shape[-2:], dtype=torch.int64)
            tensor, _ = self._transform(tensor, dummy)
        return tensor.float()

    @torch.inference_mode()
    def predict_proba(self, image: ImageInput) -> torch.Tensor:
        """Class probabilities ``(K, H, W)`` (averaged over the configured TTA, then CRF-refined
        when configured)."""
        from structseg.engine.evaluate import infer, is_map_model

        if is_map_model(self.model):
            raise ConfigError("model.head=svm/ssvm predicts MAP labels, not class probabilities: use predict()")
        image = _as_tensor(image)
        x = self.preprocess(image)[None].to(self.device)
        probs = infer(self.model, x, self.eval_cfg, self.fast_path)
        if self.refiner is not None:
            # the original colors when given, else the normalized input (the refiner undoes it)
            rgb = image[None].to(self.device) if image.dtype == torch.uint8 else x
            probs = self.refiner(probs, rgb)
        return probs[0].cpu()

    def predict(self, image: ImageInput) -> torch.Tensor:
        """Label map ``(H, W)`` int64 at the image's size (MAP inference for ``model.head: svm | ssvm``)."""
        from structseg.engine.evaluate import is_map_model

        if is_map_model(self.model):
            return self._predict_map(image)
        return self.predict_proba(image).argmax(dim=0)

    @torch.inference_mode()
    def _predict_map(self, image: ImageInput) -> torch.Tensor:
        from structseg.engine.evaluate import predict_labels

        if self.refiner is not None:
            raise ConfigError("crf.mode=dense refines class probabilities, but model.head=svm/ssvm predicts "
                              "MAP labels; use crf.mode=none")
        x = self.preprocess(image)[None].to(self.device)
        return predict_labels(self.model, x, self.eval_cfg, self.fast_path)[0].cpu()
