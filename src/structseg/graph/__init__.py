"""The graph layer shared by :mod:`structseg.structured` and :mod:`structseg.crf`: grid neighbourhoods and
edge lists, graph colorings, ground truth reduced to a feature grid, loopy belief propagation and graph
mean-field. Names load their module on first use (:mod:`structseg.graph.grid` needs only NumPy)."""
from __future__ import annotations

from structseg._lazy import lazy_exports

_EXPORTS = {
    "BPResult": "bp", "LoopyBP": "bp", "loopy_bp": "bp",
    "Neighbourhood": "grid", "above_below_offsets": "grid", "box_offsets": "grid", "check_fits": "grid",
    "coloring": "grid",
    "grid_edges": "grid", "grid_edges_tensor": "grid", "grid_offsets": "grid", "surrounding_offsets": "grid",
    "downsample_labels": "labels",
    "graph_marginals": "marginals", "graph_mean_field": "marginals", "list_marginal_methods": "marginals",
    "register_marginals": "marginals",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
