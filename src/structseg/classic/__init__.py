"""Classic unsupervised segmentation (k-means, mean-shift, normalized cuts) and its scoring.

``segment(image, method, **params)`` turns an RGB image into class-free segments;
``majority_labels`` names them from a reference map; ``evaluate_classic`` scores a
method on a labelled split with the networks' confusion-matrix metrics. Names are
imported lazily to keep ``structseg --help`` fast.
"""
from __future__ import annotations

from structseg._lazy import lazy_exports

_EXPORTS = {
    "ClassicResult": "evaluate", "evaluate_classic": "evaluate",
    "majority_labels": "labeling",
    "list_methods": "methods", "method_params": "methods", "relabel_sequential": "methods", "segment": "methods",
    "colorize_segments": "render", "overlay_segments": "render",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
