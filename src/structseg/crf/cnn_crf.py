"""CRF with CNN potentials, trained piecewise (Lin et al., CVPR 2016,
"Efficient piecewise training of deep structured models for semantic segmentation").

On the coarse feature grid of a segmentation model, a unary net scores K labels
per node and one pairwise net per edge type scores the K^2 label pairs of every
edge. Edges join each node to the nodes inside a range box: "surrounding"
(a square box, each unordered pair once) and "above/below" (a box below the
node, ordered: the source is above). Training is piecewise: each potential is a
local softmax likelihood (per-node over K, per-edge over K^2), so no partition
function is needed. Inference runs mean-field or loopy BP on the coarse graph;
the coarse beliefs are upsampled and refined by the dense CRF.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structseg.crf.dense import DenseCRF, DenseCRFConfig
from structseg.errors import ConfigError
from structseg.graph import (
    above_below_offsets,
    check_fits,
    downsample_labels,
    graph_marginals,
    grid_edges_tensor,
    surrounding_offsets,
)
from structseg.models.wrapper import NetworkWrapper, zero_layers

__all__ = ["CRFPotentials", "PairwiseNet", "CNNCRF", "CNNCRFModel", "piecewise_loss"]

if TYPE_CHECKING:
    from structseg.models.base import SegmentationModel



@dataclass
class CRFPotentials:
    """Scores (log-potentials) of a batch on an h x w grid: ``unary`` (N, K, h, w),
    and per edge type its ``edges`` (E, 2) and ``pairwise`` (N, E, K, K) indexed
    ``[label of edges[:, 0], label of edges[:, 1]]``."""

    unary: Tensor
    edges: dict[str, Tensor]
    pairwise: dict[str, Tensor]

    def scaled(self, weight: float) -> CRFPotentials:
        """The same potentials with every pairwise score multiplied by ``weight`` (0: the unaries alone)."""
        return CRFPotentials(unary=self.unary, edges=self.edges,
                             pairwise={name: scores * weight for name, scores in self.pairwise.items()})

    def pmi(self) -> CRFPotentials:
        """The same potentials with each edge's scores replaced by the pointwise mutual information of its
        local likelihood, ``log p(a, b) - log p(a) - log p(b)``: an edge trained piecewise also scores its two
        nodes' labels, which the unaries already count; what is left is the labels' compatibility."""
        pairwise = {}
        for name, scores in self.pairwise.items():
            n, e, k, _ = scores.shape
            joint = scores.reshape(n, e, k * k).log_softmax(-1).reshape(n, e, k, k)
            pairwise[name] = joint - joint.logsumexp(3, keepdim=True) - joint.logsumexp(2, keepdim=True)
        return CRFPotentials(unary=self.unary, edges=self.edges, pairwise=pairwise)

    def graph(self) -> tuple[Tensor, Tensor, Tensor]:
        """All types together: unary (N, V, K), edges (E, 2), pairwise (N, E, K, K)."""
        unary = self.unary.flatten(2).transpose(1, 2)
        edges = torch.cat([self.edges[name] for name in self.edges])
        pairwise = torch.cat([self.pairwise[name] for name in self.edges], 1)
        return unary, edges, pairwise


class PairwiseNet(nn.Module):
    """Scores K^2 label pairs of an edge from the features of its two nodes.

    The first layer on the concatenated features ``[f_src, f_dst]`` is computed
    per node (``A f_src + B f_dst``), so an edge costs one gather and a small MLP."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.from_src = nn.Conv2d(in_channels, hidden, 1)
        self.from_dst = nn.Conv2d(in_channels, hidden, 1, bias=False)
        self.out = nn.Conv1d(hidden, num_classes * num_classes, 1)

    def forward(self, features: Tensor, edges: Tensor) -> Tensor:
        a = self.from_src(features).flatten(2)
        b = self.from_dst(features).flatten(2)
        hidden = F.relu(a.index_select(2, edges[:, 0]) + b.index_select(2, edges[:, 1]))
        scores = self.out(hidden)  # (N, K*K, E)
        n, _, e = scores.shape
        return scores.transpose(1, 2).reshape(n, e, self.num_classes, self.num_classes)


class CNNCRF(nn.Module):
    """Unary and pairwise CNN potentials on a feature map (N, C, h, w).

    ``edge_types`` maps a name to its offsets; the default is Lin et al.'s two
    types, "surrounding" (radius 2) and "above_below" (3 rows down, 1 across).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        hidden: int = 128,
        edge_types: Mapping[str, Sequence[tuple[int, int]]] | None = None,
    ) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 2 or hidden < 1:
            raise ConfigError(
                "CNNCRF needs in_channels >= 1, num_classes >= 2 and hidden >= 1; "
                f"got {in_channels}, {num_classes}, {hidden}"
            )
        if edge_types is None:
            edge_types = {"surrounding": surrounding_offsets(2), "above_below": above_below_offsets(3, 1)}
        self.num_classes = num_classes
        self.edge_offsets = {name: [tuple(o) for o in offs] for name, offs in edge_types.items()}
        self.unary_net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, num_classes, 1)
        )
        self.pairwise_nets = nn.ModuleDict(
            {name: PairwiseNet(in_channels, num_classes, hidden) for name in self.edge_offsets}
        )
        self._edge_cache: dict[tuple, Tensor] = {}

    def start_neutral(self) -> None:
        """Zero the last layers: unary scores 0 and every label pair scored alike, so inference starts by
        changing nothing (the residual form, where the network's logits are the unaries' prior)."""
        zero_layers(self.unary_net[-1], *(cast(PairwiseNet, net).out for net in self.pairwise_nets.values()))

    def edges(self, name: str, height: int, width: int, device: torch.device) -> Tensor:
        key = (name, height, width, str(device))
        if key not in self._edge_cache:
            check_fits(self.edge_offsets[name], height, width, f"model.cnn_crf ({name} edges)")
            self._edge_cache[key] = grid_edges_tensor(height, width, self.edge_offsets[name], device)
        return self._edge_cache[key]

    def forward(self, features: Tensor) -> CRFPotentials:
        if features.dim() != 4:
            raise ValueError(f"features must be (N, C, h, w), got shape {tuple(features.shape)}")
        h, w = features.shape[2:]
        edges = {name: self.edges(name, h, w, features.device) for name in self.pairwise_nets}
        pairwise = {name: net(features, edges[name]) for name, net in self.pairwise_nets.items()}
        return CRFPotentials(unary=self.unary_net(features), edges=edges, pairwise=pairwise)

    @staticmethod
    def infer(
        potentials: CRFPotentials,
        method: str = "meanfield",
        *,
        iterations: int = 10,
        damping: float = 0.5,
    ) -> Tensor:
        """Coarse beliefs (N, K, h, w) by a registered graph inference method (:mod:`structseg.graph.marginals`:
        mean-field, sum- or max-product loopy BP)."""
        unary, edges, pairwise = potentials.graph()
        q = graph_marginals(method, unary, edges, pairwise, iterations=iterations, damping=damping)
        n, k, h, w = potentials.unary.shape
        return q.transpose(1, 2).reshape(n, k, h, w).contiguous()


def piecewise_loss(potentials: CRFPotentials, target: Tensor, *, ignore_index: int = 255,
                   class_weights: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """Piecewise training objective: per-node softmax cross-entropy of the unaries (weighted per class by
    ``class_weights`` when given) plus, per edge type, per-edge softmax cross-entropy over the K^2 label pairs.

    ``target`` (N, H, W) is reduced to the grid by majority vote; edges touching an
    ignored node are left out. Returns the total and its parts (for logging)."""
    n, k, h, w = potentials.unary.shape
    labels = downsample_labels(target.to(potentials.unary.device), (h, w), k, ignore_index)
    if bool((labels != ignore_index).any()):
        weight = None if class_weights is None else class_weights.to(potentials.unary)
        unary_loss = F.cross_entropy(potentials.unary, labels, weight=weight, ignore_index=ignore_index)
    else:  # nothing labelled: a zero that keeps the graph
        unary_loss = potentials.unary.sum() * 0.0
    total = unary_loss
    parts = {"unary": float(unary_loss.detach())}
    flat = labels.flatten(1)
    for name, edges in potentials.edges.items():
        src, dst = flat[:, edges[:, 0]], flat[:, edges[:, 1]]
        valid = (src != ignore_index) & (dst != ignore_index)
        pair_target = torch.where(valid, src * k + dst, torch.full_like(src, -100))
        scores = potentials.pairwise[name].reshape(n, -1, k * k)
        loss = F.cross_entropy(scores.transpose(1, 2), pair_target, ignore_index=-100)
        if not bool(valid.any()):
            loss = scores.sum() * 0.0
        total = total + loss
        parts[name] = float(loss.detach())
    return total, parts


class CNNCRFModel(NetworkWrapper):
    """A segmentation network with Lin et al.'s CNN-CRF on its penultimate features: the engine's
    ``model.head: cnn_crf``; state-dict keys ``base.*`` (the network) and ``crf.*`` (:class:`CNNCRF`).

    - ``model(x, target)`` -> the piecewise loss (what the trainer optimises, through DDP); ``loss(x, target)``
      also returns its parts;
    - ``model(x)`` -> logits at the input size from coarse inference (``method``: mean-field, sum- or max-product
      BP, registered in :mod:`structseg.graph.marginals`), for evaluation, TTA and the dense CRF alike;
    - ``pairwise="pmi"`` runs inference on the pairwise scores' pointwise mutual information
      (:meth:`CRFPotentials.pmi`) instead of the raw piecewise scores; ``pairwise_weight`` scales them at inference
      (piecewise training does not calibrate their strength against the unaries; 0 leaves the unaries alone);
    - ``residual=False`` (Lin et al.): the logits are the log of the coarse beliefs, bilinearly upsampled.
      ``residual=True``: the network's own logits, average-pooled to the grid, are the unaries' prior (the CRF
      starts neutral and learns a correction), and the output is the network's full-resolution logits plus the
      upsampled change from the network's coarse log-probabilities to the CRF's coarse log-beliefs (learnt unary
      correction and pairwise context alike), so the CRF adds context without losing the network's resolution;
    - ``training="piecewise"`` (Lin et al.): each potential is trained as its own local likelihood (no inference in
      training; the pairwise strength is not calibrated against the unaries). ``training="meanfield"``: the loss is
      the cross-entropy of what ``model(x)`` returns (inference unrolled, ``iterations`` steps of ``method``) at the
      input size, so unary and pairwise nets are learnt jointly for the beliefs that are scored;
    - features are average-pooled by ``feature_stride`` (a coarser, cheaper graph); ``train_backbone=False`` keeps
      the network frozen; ``class_weights`` (set by the trainer from ``data.class_weights``) weight the unary
      term. The CRF runs in float32 outside autocast; ``backbone`` is the network's encoder.
    """

    trains_own_loss = True

    def __init__(self, base: SegmentationModel, num_classes: int, *, train_backbone: bool = True,
                 feature_stride: int = 1, residual: bool = False, pairwise: Literal["raw", "pmi"] = "raw",
                 pairwise_weight: float = 1.0, training: Literal["piecewise", "meanfield"] = "piecewise",
                 method: str = "meanfield", iterations: int = 10, damping: float = 0.5, ignore_index: int = 255,
                 **crf_options: Any) -> None:
        super().__init__(base, feature_stride=feature_stride, train_backbone=train_backbone, what="the CNN-CRF")
        if pairwise not in ("raw", "pmi"):
            raise ConfigError(f"the CNN-CRF's pairwise form must be 'raw' or 'pmi', got {pairwise!r}")
        if training not in ("piecewise", "meanfield"):
            raise ConfigError(f"the CNN-CRF's training must be 'piecewise' or 'meanfield', got {training!r}")
        self.training_mode = training
        self.method, self.iterations, self.damping = method, int(iterations), float(damping)
        self.ignore_index, self.residual, self.pairwise = ignore_index, bool(residual), pairwise
        self.pairwise_weight = float(pairwise_weight)
        self.class_weights: Tensor | None = None
        self.crf = CNNCRF(int(base.feature_channels), num_classes, **crf_options)
        if self.residual:
            self.crf.start_neutral()

    @property
    def num_classes(self) -> int:
        return self.crf.num_classes

    def _potentials(self, images: Tensor) -> tuple[CRFPotentials, Tensor, Tensor | None]:
        """The potentials, the network's logits and (residual form) those logits pooled to the grid."""
        features, logits = self.features_and_logits(images)
        with torch.autocast(device_type=images.device.type, enabled=False):
            potentials = self.crf(features.float())
            prior = None
            if self.residual:
                prior = F.adaptive_avg_pool2d(logits.float(), potentials.unary.shape[-2:])
                potentials.unary = potentials.unary + prior
        return potentials, logits, prior

    def potentials(self, images: Tensor) -> CRFPotentials:
        return self._potentials(images)[0]

    def forward(self, images: Tensor, target: Tensor | None = None) -> Tensor:
        if target is not None:
            return self.loss(images, target)[0]
        return self.logits(images)

    def logits(self, images: Tensor, *, method: str | None = None, iterations: int | None = None,
               damping: float | None = None) -> Tensor:
        """What ``model(x)`` returns; ``method``, ``iterations`` and ``damping`` override the model's own."""
        potentials, logits, prior = self._potentials(images)
        size = images.shape[-2:]
        with torch.autocast(device_type=images.device.type, enabled=False):
            used = potentials.pmi() if self.pairwise == "pmi" else potentials
            if self.pairwise_weight != 1.0:
                used = used.scaled(self.pairwise_weight)
            beliefs = CNNCRF.infer(used, method or self.method, iterations=iterations or self.iterations,
                                   damping=self.damping if damping is None else damping)
            if prior is not None:  # the coarse beliefs against the network's coarse prediction, added at full size
                change = torch.log(beliefs.clamp_min(1e-8)) - prior.log_softmax(1)
                return logits.float() + F.interpolate(change, size=size, mode="bilinear", align_corners=False)
            beliefs = F.interpolate(beliefs, size=size, mode="bilinear", align_corners=False)
            return torch.log(beliefs.clamp_min(1e-8))

    def loss(self, images: Tensor, target: Tensor, *,
             ignore_index: int | None = None) -> tuple[Tensor, dict[str, float]]:
        """The training loss against ``target`` and its parts: piecewise, the local likelihoods of the potentials
        (``target`` reduced to the feature grid); meanfield, the cross-entropy of the inferred logits at the input
        size."""
        index = self.ignore_index if ignore_index is None else ignore_index
        if self.training_mode == "meanfield":
            logits = self.logits(images)
            loss = self.cross_entropy(logits, target.to(logits.device), ignore_index=index)
            return loss, {"meanfield": float(loss.detach())}
        return piecewise_loss(self.potentials(images), target, ignore_index=index, class_weights=self.class_weights)

    def predict(self, images: Tensor, rgb: Tensor, *, dense: DenseCRFConfig | Mapping[str, Any] | None
                | Literal[False] = None, **inference: Any) -> Tensor:
        """Probabilities (N, K, H, W): :meth:`logits` (``inference``: its overrides) refined by the dense CRF
        (``dense=False`` skips it); ``images`` are the model inputs (normalized), ``rgb`` the same images as uint8
        (or float in [0, 1])."""
        with torch.no_grad():
            logits = self.logits(images, **inference)
            if dense is False:
                return torch.softmax(logits, 1)
            return DenseCRF(dense)(logits, rgb, input_type="logits")
