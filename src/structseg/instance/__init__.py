"""Instance segmentation with torchvision's Mask R-CNN: data, training, COCO evaluation, drawing.

Detection label ``c + 1`` is semantic class ``c`` (0 is background); see
:mod:`structseg.instance.targets`. Names are imported lazily so that the CLI's
``structseg.instance.commands`` does not pull in torch at start-up.
"""
from __future__ import annotations

from structseg._lazy import lazy_exports

_EXPORTS = {
    "coco_evaluate": "coco", "encode_masks": "coco", "format_ap": "coco",
    "InstanceConfig": "config", "load_instance_config": "config",
    "InstanceDataset": "datasets", "LoadedInstances": "datasets", "MapInstances": "datasets",
    "VOCInstances": "datasets", "build_instance_dataset": "datasets", "collate_detection": "datasets",
    "draw_instances": "draw",
    "build_maskrcnn": "models", "list_backbones": "models",
    "mask_boxes": "targets", "targets_from_maps": "targets",
    "evaluate_model": "train", "evaluate_run": "train", "load_run": "train", "train_instance": "train",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
