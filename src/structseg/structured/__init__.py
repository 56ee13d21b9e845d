"""Structured prediction: labeling problems, MAP inference (ILP, LP, BP, graph cuts, ICM), SVM heads.

- :mod:`structseg.structured.problem`: :class:`LabelingProblem` (maximise ``S(y)``), Hamming loss; grid edges come
  from :mod:`structseg.graph`, shared with :mod:`structseg.crf`.
- :mod:`structseg.structured.inference`: ``infer(problem, solver, ...)``, ``infer_batch``, ``list_solvers()``.
- :mod:`structseg.structured.models`: ``LinearSVMHead``, ``StructuredSVMHead``, ``StructuredSegmenter``,
  ``multiclass_hinge_loss`` (imports torch; import it explicitly); the per-pixel pieces live in
  :mod:`structseg.structured.linear`, the SSVM with the dense CRF's pairwise terms in :mod:`structseg.structured.dense`.
"""
from structseg.graph.grid import grid_edges
from structseg.structured.inference import InferenceResult, infer, infer_batch, list_solvers
from structseg.structured.problem import LabelingProblem, hamming_loss

__all__ = ["InferenceResult", "LabelingProblem", "grid_edges", "hamming_loss", "infer", "infer_batch", "list_solvers"]
