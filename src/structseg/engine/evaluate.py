"""Inference (whole image or sliding window, flip and multi-scale TTA) and evaluation.

:func:`infer` turns a normalized batch into class probabilities at the input
resolution; :func:`evaluate_model` runs it over a loader, optionally refines
the probabilities with a dense CRF (:func:`build_refiner`), and accumulates a
:class:`~structseg.metrics.ConfusionMatrix` (summed over processes in DDP).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

from structseg.engine.config import CRFConfig, EvalConfig, as_pair
from structseg.errors import ConfigError

if TYPE_CHECKING:
    from structseg.engine.build import Normalization
    from structseg.metrics import SegMetrics
    from structseg.models.fastpath import FastPath


def _autocast(fast_path: FastPath | None, device: torch.device) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext() if fast_path is None else fast_path.autocast(device)


def _prepare_input(x: torch.Tensor, fast_path: FastPath | None) -> torch.Tensor:
    return x if fast_path is None else fast_path.prepare_input(x)


def forward_logits(model: nn.Module, x: torch.Tensor, fast_path: FastPath | None = None) -> torch.Tensor:
    """``model(x)`` as float32 logits, on the fast path when one is given."""
    with _autocast(fast_path, x.device):
        return cast(torch.Tensor, model(_prepare_input(x, fast_path)).float())


def gaussian_window(size: tuple[int, int], sigma_scale: float = 0.25,
                    device: torch.device | None = None) -> torch.Tensor:
    """Separable Gaussian weight map ``(h, w)``, 1 at the centre, sigma = size * sigma_scale."""
    axes = []
    for n in size:
        coords = torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2
        sigma = max(n * sigma_scale, 1e-3)
        axes.append(torch.exp(-0.5 * (coords / sigma) ** 2))
    return axes[0][:, None] * axes[1][None, :]


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window offsets covering ``[0, length)``; the last window ends exactly at ``length``."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    starts.append(length - window)
    return starts


def slide_logits(
    model: nn.Module,
    x: torch.Tensor,
    window: tuple[int, int],
    stride: tuple[int, int],
    *,
    blend: str = "gaussian",
    fast_path: FastPath | None = None,
    crops_per_batch: int = 4,
) -> torch.Tensor:
    """Logits from overlapping ``window`` crops, blended with Gaussian or uniform weights.

    Images smaller than the window are zero-padded (zero is the mean after
    normalization) and the padding is cropped off the result.
    """
    n, _, h, w = x.shape
    wh, ww = window
    pad_h, pad_w = max(wh - h, 0), max(ww - w, 0)
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    hp, wp = x.shape[-2:]
    boxes = [(y, z) for y in window_starts(hp, wh, stride[0]) for z in window_starts(wp, ww, stride[1])]
    weight = gaussian_window((wh, ww), device=x.device) if blend == "gaussian" else torch.ones(wh, ww, device=x.device)
    total: torch.Tensor | None = None
    norm = torch.zeros(hp, wp, device=x.device)
    for k in range(0, len(boxes), crops_per_batch):
        group = boxes[k : k + crops_per_batch]
        crops = torch.cat([x[:, :, y : y + wh, z : z + ww] for y, z in group])
        logits = forward_logits(model, crops, fast_path)
        if total is None:
            total = torch.zeros(n, logits.shape[1], hp, wp, device=x.device)
        for j, (y, z) in enumerate(group):
            total[:, :, y : y + wh, z : z + ww] += logits[j * n : (j + 1) * n] * weight
            norm[y : y + wh, z : z + ww] += weight
    assert total is not None
    return (total / norm)[:, :, :h, :w]


def _check_eval(cfg: EvalConfig) -> tuple[tuple[int, int], tuple[int, int]] | None:
    if cfg.mode != "slide":
        return None
    window = as_pair(cfg.window, "eval.window")
    if window is None:
        raise ConfigError("eval.mode=slide needs eval.window (an int or [height, width])")
    stride = as_pair(cfg.stride, "eval.stride") or (max(1, window[0] * 2 // 3), max(1, window[1] * 2 // 3))
    if min(window) <= 0 or min(stride) <= 0:
        raise ConfigError(f"eval.window {window} and eval.stride {stride} must be positive")
    return window, stride


def infer(model: nn.Module, images: torch.Tensor, cfg: EvalConfig | None = None,
          fast_path: FastPath | None = None) -> torch.Tensor:
    """Class probabilities ``(N, K, H, W)`` for normalized images ``(N, 3, H, W)``.

    Averages softmax probabilities over ``cfg.scales`` (the image is resized,
    the logits resized back) and, with ``cfg.flip``, horizontal flips.
    """
    cfg = cfg or EvalConfig()
    slide = _check_eval(cfg)
    if not cfg.scales or any(s <= 0 for s in cfg.scales):
        raise ConfigError(f"eval.scales must be positive numbers, got {cfg.scales}")
    h, w = images.shape[-2:]
    total: torch.Tensor | None = None
    passes = 0
    for scale in cfg.scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        xs = images if size == (h, w) else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        for flip in (False, True) if cfg.flip else (False,):
            xi = xs.flip(-1) if flip else xs
            if slide is None:
                logits = forward_logits(model, xi, fast_path)
            else:
                logits = slide_logits(model, xi, *slide, blend=cfg.blend, fast_path=fast_path)
            if flip:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            probs = logits.softmax(dim=1)
            total = probs if total is None else total + probs
            passes += 1
    assert total is not None
    return total / passes


def is_map_model(model: nn.Module) -> bool:
    """True for models decoded by MAP inference (``model.predict``): the SVM heads of :mod:`.heads`."""
    return bool(getattr(model, "map_inference", False))


def predict_labels(model: nn.Module, images: torch.Tensor, cfg: EvalConfig | None = None,
                   fast_path: FastPath | None = None) -> torch.Tensor:
    """Labels ``(N, H, W)`` for normalized images ``(N, 3, H, W)``.

    The argmax of :func:`infer`'s probabilities, or for a MAP model (``model.head: svm | ssvm``)
    ``model.predict`` on the image resized by the one ``eval.scales`` entry, labels at the
    image's size; the base network keeps the fast path, the head decodes in float32.
    """
    if not is_map_model(model):
        return infer(model, images, cfg, fast_path).argmax(dim=1)
    from structseg.engine.heads import check_map_eval

    cfg = cfg or EvalConfig()
    check_map_eval(cfg)
    h, w = images.shape[-2:]
    size = (max(1, round(h * cfg.scales[0])), max(1, round(w * cfg.scales[0])))
    x = images if size == (h, w) else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    with _autocast(fast_path, x.device):
        labels: torch.Tensor = model.predict(_prepare_input(x, fast_path), size=(h, w))  # type: ignore[operator]
        return labels


ProbRefiner = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_refiner(crf: CRFConfig | None, normalization: Normalization | None = None) -> ProbRefiner | None:
    """``refiner(probs, images) -> probs`` for ``crf.mode``; None when it is ``"none"``.

    ``images`` are the model inputs (normalized with ``normalization``, the run's (mean, std) from
    :func:`structseg.engine.build.normalization`, undone for the bilateral kernel; None: the default
    of random weights) or uint8 colors; probabilities and images share a size."""
    if crf is None or crf.mode == "none":
        return None
    from structseg.crf.dense import DenseCRFConfig, DenseCRFRefiner
    from structseg.engine.build import normalization as run_normalization

    mean, std = normalization or run_normalization(None)
    dense = DenseCRFRefiner(DenseCRFConfig(**crf.dense_params()), mean=mean, std=std)

    def refine_probs(probs: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return dense(probs_to_logits(probs), images)

    return refine_probs


def probs_to_logits(probs: torch.Tensor) -> torch.Tensor:
    """Log-probabilities (clamped at 1e-8): the CRF's unary scores for fused probabilities."""
    return torch.log(probs.clamp_min(1e-8))


def describe_crf(crf: CRFConfig | None) -> str:
    """One line naming the refinement, for printed output."""
    if crf is None or crf.mode == "none":
        return "CRF: none"
    return (f"CRF: dense, {crf.iterations} iterations, spatial sxy {crf.sxy_gaussian:g} compat "
            f"{crf.compat_gaussian:g}, bilateral sxy {crf.sxy_bilateral:g} srgb {crf.srgb:g} "
            f"compat {crf.compat_bilateral:g}")


def _batches(loader: Iterable[Sequence[torch.Tensor]]) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    for batch in loader:
        yield batch[0], batch[1]


@torch.inference_mode()
def evaluate_model(
    model: nn.Module,
    loader: Iterable[Sequence[torch.Tensor]],
    num_classes: int,
    *,
    ignore_index: int = 255,
    cfg: EvalConfig | None = None,
    device: torch.device | str = "cpu",
    fast_path: FastPath | None = None,
    progress: bool = False,
    desc: str = "eval",
    crf: CRFConfig | ProbRefiner | None = None,
) -> SegMetrics:
    """Confusion-matrix metrics of ``model`` over ``loader`` (reduced across processes).

    ``crf`` (a ``crf`` config section or a ``refiner(probs, images)``) refines the
    (test-time fused) probabilities of each batch before the argmax."""
    from tqdm.auto import tqdm

    from structseg.metrics import ConfusionMatrix

    device = torch.device(device)
    was_training = model.training
    model.eval()
    map_model = is_map_model(model)
    if map_model and crf is not None and (not isinstance(crf, CRFConfig) or crf.mode != "none"):
        raise ConfigError("crf refines class probabilities, but model.head=svm/ssvm predicts MAP labels; "
                          "use crf.mode=none")
    refiner = build_refiner(crf) if crf is None or isinstance(crf, CRFConfig) else crf
    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index, device=device)
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    try:
        for images, masks in tqdm(_batches(loader), total=total, desc=desc, disable=not progress, leave=False):
            images = images.to(device, non_blocking=True)
            masks = masks.to(device, non_blocking=True)
            if map_model:
                cm.update(predict_labels(model, images, cfg, fast_path), masks)
                continue
            probs = infer(model, images, cfg, fast_path)
            if refiner is not None:
                probs = refiner(probs, images)
            cm.update(probs.argmax(dim=1), masks)
    finally:
        model.train(was_training)
    cm.all_reduce()
    return cm.compute()

