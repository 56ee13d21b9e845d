"""Conditional random fields for segmentation.

- :mod:`~structseg.crf.params`: ``DenseCRFConfig``, the dense CRF's parameters and defaults (torch-free).
- :mod:`~structseg.crf.dense`: fully connected CRF post-processing (Krähenbühl & Koltun 2011),
  ``dense_crf``, ``DenseCRF``, ``refine`` / ``DenseCRFRefiner``.
- :mod:`~structseg.crf.layer`: ``MeanFieldCRF``, the same CRF as a trainable layer (CRF-as-RNN).
- :mod:`~structseg.crf.permutohedral`: the lattice that makes the Gaussian filtering fast.
- :mod:`~structseg.crf.cnn_crf`: CRF with CNN unary and pairwise potentials, trained piecewise (Lin et al. 2016).

Graphs, loopy BP and graph mean-field live in :mod:`structseg.graph`, shared with :mod:`structseg.structured`.
The names below load their module (and torch) on first use, so the config can read ``crf.params`` cheaply.
"""
from __future__ import annotations

from structseg._lazy import lazy_exports

_EXPORTS = {
    "CNNCRF": "cnn_crf", "CNNCRFModel": "cnn_crf", "CRFPotentials": "cnn_crf", "piecewise_loss": "cnn_crf",
    "DenseCRF": "dense", "DenseCRFRefiner": "dense", "dense_crf": "dense", "refine": "dense",
    "DenseCRFConfig": "params",
    "GaussianKernels": "kernels",
    "MeanFieldCRF": "layer", "CRFRNN": "layer",
    "MessageEstimator": "message_net", "MessageNetModel": "message_net",
    "free_energy": "meanfield", "mean_field": "meanfield",
    "PermutohedralLattice": "permutohedral", "build_lattice": "permutohedral",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
