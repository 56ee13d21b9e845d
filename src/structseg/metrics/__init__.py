"""Segmentation metrics: a streaming confusion matrix and the scores derived from it.

``ConfusionMatrix(num_classes, ignore_index)`` accumulates batches (labels or
logits), ``.all_reduce()`` sums it across distributed processes and
``.compute()`` returns :class:`SegMetrics` (pixel/mean accuracy, IoU, mIoU,
fwIoU, Dice). The figure helpers import matplotlib only when called.
"""
from structseg.metrics.confusion import ConfusionMatrix, SegMetrics, metrics_from_confusion
from structseg.metrics.plots import plot_confusion, plot_per_class_iou

__all__ = ["ConfusionMatrix", "SegMetrics", "metrics_from_confusion", "plot_confusion", "plot_per_class_iou"]
