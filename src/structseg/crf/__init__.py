"""Conditional random fields for segmentation.

- :mod:`~structseg.crf.dense`: fully connected CRF post-processing (Krähenbühl & Koltun 2011),
  ``dense_crf``, ``DenseCRF``, ``refine`` / ``DenseCRFRefiner``.
- :mod:`~structseg.crf.layer`: ``MeanFieldCRF``, the same CRF as a trainable layer (CRF-as-RNN).
- :mod:`~structseg.crf.permutohedral`: the lattice that makes the Gaussian filtering fast.
- :mod:`~structseg.crf.cnn_crf`: CRF with CNN unary and pairwise potentials, trained piecewise (Lin et al. 2016).
- :mod:`~structseg.crf.bp`: loopy belief propagation (sum- and max-product) on pairwise graphs.
"""
from structseg.crf.bp import BPResult, loopy_bp
from structseg.crf.cnn_crf import (
    CNNCRF,
    CNNCRFModel,
    CRFPotentials,
    above_below_offsets,
    graph_mean_field,
    grid_edges,
    piecewise_loss,
    surrounding_offsets,
)
from structseg.crf.dense import DenseCRF, DenseCRFConfig, DenseCRFRefiner, dense_crf, refine
from structseg.crf.kernels import GaussianKernels
from structseg.crf.layer import MeanFieldCRF
from structseg.crf.meanfield import free_energy, mean_field
from structseg.crf.permutohedral import PermutohedralLattice, build_lattice

__all__ = [
    "BPResult",
    "CNNCRF",
    "CNNCRFModel",
    "CRFPotentials",
    "DenseCRF",
    "DenseCRFConfig",
    "DenseCRFRefiner",
    "GaussianKernels",
    "MeanFieldCRF",
    "PermutohedralLattice",
    "above_below_offsets",
    "build_lattice",
    "dense_crf",
    "free_energy",
    "graph_mean_field",
    "grid_edges",
    "loopy_bp",
    "mean_field",
    "piecewise_loss",
    "refine",
    "surrounding_offsets",
]
