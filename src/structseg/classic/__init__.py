"""Classic unsupervised segmentation (k-means, mean-shift, normalized cuts) and its scoring.

``segment(image, method, **params)`` turns an RGB image into class-free segments;
``majority_labels`` names them from a reference map; ``evaluate_classic`` scores a
method on a labelled split with the networks' confusion-matrix metrics. Names are
imported lazily to keep ``structseg --help`` fast.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ClassicResult": "evaluate", "evaluate_classic": "evaluate",
    "majority_labels": "labelling",
    "list_methods": "methods", "method_params": "methods", "relabel_sequential": "methods", "segment": "methods",
    "colorize_labels": "render", "colorize_segments": "render", "overlay": "render",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'structseg.classic' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"structseg.classic.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
