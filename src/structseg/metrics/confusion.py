"""Streaming confusion matrix and the segmentation scores derived from it.

The matrix is accumulated on the device of the data (``torch.bincount`` of
``target * K + pred`` over the pixels that are not ignored), summed across
``torch.distributed`` processes by :meth:`ConfusionMatrix.all_reduce`, and
turned into :class:`SegMetrics` by :meth:`ConfusionMatrix.compute`.

A class is *present* when it occurs in the truth or in the prediction. Absent
classes get NaN in the per-class tensors and are left out of every mean; a
class that is predicted but never true is present and scores 0 (IoU, Dice and
accuracy alike, the ``zero_division=0`` convention of torchmetrics).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from structseg.errors import ConfigError, DataError


def _class_names(names: Sequence[str] | None, num_classes: int) -> list[str]:
    if names is None:
        return [f"class_{i}" for i in range(num_classes)]
    names = [str(n) for n in names]
    if len(names) != num_classes:
        raise DataError(f"class_names has {len(names)} entries but the metrics have {num_classes} classes")
    return names


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


@dataclass(frozen=True)
class SegMetrics:
    """Scores of one confusion matrix (rows = truth, columns = prediction).

    Per-class tensors are float64 on the CPU; fractions in [0, 1], not percent.
    """

    pixel_acc: float
    mean_acc: float
    miou: float
    fwiou: float
    iou: torch.Tensor
    acc: torch.Tensor
    dice: torch.Tensor
    present: torch.Tensor
    confusion: torch.Tensor

    @property
    def num_classes(self) -> int:
        return int(self.confusion.shape[0])

    @property
    def mean_dice(self) -> float:
        """Mean Dice/F1 over present classes."""
        return _nanmean(self.dice)

    def as_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-serialisable summary; NaN (absent class, empty matrix) becomes ``None``."""
        names = _class_names(class_names, self.num_classes)
        per_class = {
            name: {
                "iou": _number(float(self.iou[i])),
                "acc": _number(float(self.acc[i])),
                "dice": _number(float(self.dice[i])),
                "present": bool(self.present[i]),
                "pixels": int(self.confusion[i].sum()),
            }
            for i, name in enumerate(names)
        }
        return {
            "pixel_acc": _number(self.pixel_acc),
            "mean_acc": _number(self.mean_acc),
            "miou": _number(self.miou),
            "fwiou": _number(self.fwiou),
            "mean_dice": _number(self.mean_dice),
            "per_class": per_class,
            "class_names": names,
            "confusion": self.confusion.tolist(),
        }

    def table(self, class_names: Sequence[str] | None = None) -> str:
        """Fixed-width per-class table (IoU, accuracy, Dice in %, present) and summary lines."""
        names = _class_names(class_names, self.num_classes)
        width = max([len("class"), *(len(n) for n in names)])

        def pct(value: float) -> str:
            return f"{'-':>7}" if math.isnan(value) else f"{100 * value:7.2f}"

        header = f"{'class':<{width}} {'IoU':>7} {'acc':>7} {'Dice':>7} {'present':>7}"
        lines = [header, "-" * len(header)]
        for i, name in enumerate(names):
            present = "yes" if bool(self.present[i]) else "no"
            lines.append(
                f"{name:<{width}} {pct(float(self.iou[i]))} {pct(float(self.acc[i]))} "
                f"{pct(float(self.dice[i]))} {present:>7}"
            )
        lines.append("-" * len(header))
        n_present = int(self.present.sum())
        lines += [
            f"{'mIoU':<18}{pct(self.miou)}  ({n_present}/{self.num_classes} classes present)",
            f"{'pixel accuracy':<18}{pct(self.pixel_acc)}",
            f"{'mean accuracy':<18}{pct(self.mean_acc)}",
            f"{'mean Dice':<18}{pct(self.mean_dice)}",
            f"{'fwIoU':<18}{pct(self.fwiou)}",
        ]
        return "\n".join(lines)


def _nanmean(values: torch.Tensor) -> float:
    keep = ~torch.isnan(values)
    return float(values[keep].mean()) if bool(keep.any()) else math.nan


def _ratio(num: torch.Tensor, den: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``num / den`` with 0/0 -> 0 for present classes and NaN for absent ones."""
    out = torch.where(den > 0, num / den.clamp_min(1), torch.zeros_like(num))
    return torch.where(present, out, torch.full_like(num, math.nan))


def metrics_from_confusion(confusion: torch.Tensor) -> SegMetrics:
    """All scores of a (K, K) confusion matrix with truth in rows."""
    if confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1]:
        raise DataError(f"confusion matrix must be square (K, K), got shape {tuple(confusion.shape)}")
    conf = confusion.detach().to("cpu", torch.float64)
    tp = conf.diag()
    truth = conf.sum(1)
    predicted = conf.sum(0)
    total = conf.sum()
    present = (truth + predicted) > 0

    iou = _ratio(tp, truth + predicted - tp, present)
    acc = _ratio(tp, truth, present)
    dice = _ratio(2 * tp, truth + predicted, present)
    if total > 0:
        pixel_acc = float(tp.sum() / total)
        fwiou = float((truth / total * iou.nan_to_num(0.0)).sum())
    else:
        pixel_acc = fwiou = math.nan
    return SegMetrics(
        pixel_acc=pixel_acc,
        mean_acc=_nanmean(acc),
        miou=_nanmean(iou),
        fwiou=fwiou,
        iou=iou,
        acc=acc,
        dice=dice,
        present=present,
        confusion=confusion.detach().to("cpu", torch.int64).clone(),
    )


class ConfusionMatrix:
    """Streaming (K, K) int64 confusion matrix, rows = truth, columns = prediction.

    ``device=None`` lets the matrix follow the device of the data it is given;
    a fixed device moves incoming data there instead.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"num_classes must be a positive int, got {num_classes!r}")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ConfigError(f"ignore_index must be an int, got {ignore_index!r}")
        if 0 <= ignore_index < num_classes:
            raise ConfigError(
                f"ignore_index {ignore_index} is a valid class id for num_classes={num_classes}; "
                "use a value outside [0, num_classes)"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._fixed_device = device is not None
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    def reset(self) -> None:
        """Zero the matrix (start of a new evaluation)."""
        self.matrix.zero_()

    def _labels(self, pred_or_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred_or_logits.dim() == target.dim() + 1:
            if not pred_or_logits.is_floating_point():
                raise DataError(
                    f"predictions of shape {tuple(pred_or_logits.shape)} look like logits but have "
                    f"dtype {pred_or_logits.dtype}"
                )
            if pred_or_logits.shape[-3] != self.num_classes:
                raise DataError(
                    f"logits have {pred_or_logits.shape[-3]} channels but the metric has {self.num_classes} classes"
                )
            pred = pred_or_logits.max(dim=-3).indices  # same first-max rule as argmax, faster on CPU
        elif pred_or_logits.is_floating_point() or pred_or_logits.dtype == torch.bool:
            raise DataError(f"predictions must be integer labels or logits, got dtype {pred_or_logits.dtype}")
        else:
            pred = pred_or_logits
        if pred.shape != target.shape:
            raise DataError(
                f"prediction shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}"
            )
        return pred

    @torch.no_grad()
    def update(self, pred_or_logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: predictions (N,H,W) or logits (N,K,H,W), targets (N,H,W) (or unbatched)."""
        if target.is_floating_point() or target.dtype == torch.bool:
            raise DataError(f"target must hold integer class ids, got dtype {target.dtype}")
        from_logits = pred_or_logits.dim() == target.dim() + 1
        pred = self._labels(pred_or_logits, target)
        if not self._fixed_device and target.device != self.matrix.device:
            self.matrix = self.matrix.to(target.device)
        target = target.to(self.matrix.device).long()
        pred = pred.to(self.matrix.device).long()

        k = self.num_classes
        valid = target != self.ignore_index
        bad_target = valid & ((target < 0) | (target >= k))
        bad_pred = torch.zeros_like(valid) if from_logits else valid & ((pred < 0) | (pred >= k))
        if bool((bad_target | bad_pred).any()):  # one device sync for both checks
            if bool(bad_target.any()):
                values = torch.unique(target[bad_target])[:5].tolist()
                raise DataError(
                    f"target labels {values} are outside [0, {k}) and are not the ignore index {self.ignore_index}"
                )
            values = torch.unique(pred[bad_pred])[:5].tolist()
            raise DataError(f"predicted labels {values} are outside [0, {k})")
        # ignored pixels go to an extra bin that is dropped: cheaper than boolean indexing
        index = torch.where(valid, target * k + pred, k * k)
        counts = torch.bincount(index.reshape(-1), minlength=k * k + 1)
        self.matrix += counts[: k * k].view(k, k)

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the matrix over all ``torch.distributed`` processes; a no-op when not initialised.

        Call it once, after the last update and before ``compute`` (a second call sums again).
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        if dist.get_backend() == "nccl" and self.matrix.device.type != "cuda":
            on_gpu = self.matrix.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
            self.matrix.copy_(on_gpu)
        else:
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)
        return self

    def compute(self) -> SegMetrics:
        """Scores of the matrix accumulated so far."""
        return metrics_from_confusion(self.matrix)

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"pixels={int(self.matrix.sum())}, device={self.device})"
        )
