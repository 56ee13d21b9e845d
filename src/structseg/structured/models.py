"""SVM heads on a segmentation network's feature map, and a wrapper that makes them a segmenter.

A head works on ``features`` (N, C, h, w) from ``model.forward_features(x)["features"]``
and has the same small protocol:

- ``head(features)`` -> unary scores (N, K, h, w) (logits-like, higher = more likely);
- ``head.loss(features, target)`` -> scalar, ``target`` (N, H, W) long at any resolution;
- ``head.predict(features, size=None)`` -> labels (N, h, w), or (N, *size) upsampled.

Each also takes ``prior``: a network's own logits (N, K, H, W) at any resolution, added to the unary scores (the
residual form: the head learns a correction, and starts as the network when its unary layer is zero). The grid
sees the prior area-pooled to (h, w); predictions at a finer ``size`` see it resized bilinearly.

:class:`LinearSVMHead` is a 1x1 convolution trained with the Crammer-Singer
multiclass hinge. :class:`StructuredSVMHead` adds pairwise potentials on the
feature grid's edges (nn.Linear on the two pixels' concatenated features) and
is trained with the structured hinge

    l(x, y*) = max_y [Delta(y, y*) + S(y)] - S(y*)

whose maximiser comes from loss-augmented MAP inference
(:func:`structseg.structured.inference.infer`), run on detached numpy copies;
gradients flow through ``S(y_hat) - S(y*)`` into the potentials and the CNN.

Ignored pixels: the truth is downsampled to the feature grid (majority vote
among labelled pixels; a cell with too few labelled pixels becomes ignore).
Ignored nodes contribute no unary and no pairwise term (every edge touching
one is dropped) to the loss, so the loss is that of the labelled subgraph.

:class:`StructuredSegmenter` (base model + head) returns upsampled unary scores
from ``forward`` so evaluation code that expects logits works unchanged, and
adds ``loss(x, target)`` and ``predict(x)`` (MAP labels at the input size).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structseg._shapes import spatial_size
from structseg.errors import ConfigError, SolverError
from structseg.graph import check_fits, downsample_labels, grid_edges
from structseg.models.ops import guard_bf16_conv_defect
from structseg.models.wrapper import NetworkWrapper, zero_layers
from structseg.structured.contrast import contrast_rewards
from structseg.structured.dense import DenseSSVMHead
from structseg.structured.inference import DEFAULT_SOLVER, infer_batch
from structseg.structured.linear import LinearSVMHead, add_prior, hamming_costs, multiclass_hinge_loss, scores_at
from structseg.structured.problem import LabelingProblem

if TYPE_CHECKING:
    from structseg.models.base import SegmentationModel

__all__ = [
    "DenseSSVMHead",
    "LinearSVMHead",
    "StructuredSVMHead",
    "StructuredSegmenter",
    "add_prior",
    "multiclass_hinge_loss",
]


class StructuredSVMHead(nn.Module):
    """Unary + pairwise potentials on the feature grid, trained with the structured hinge.

    ``pairwise="agreement"``: per-edge, per-class agreement rewards (E, K);
    ``"full"``: a K x K table per edge (E, K, K). Both come from one
    ``nn.Linear(2C, K or K*K)`` on ``[f_i, f_j]``, computed without building
    the (E, 2C) matrix: ``W [f_i; f_j] = W_1 f_i + W_2 f_j``. ``"contrast"``: agreement rewards from the image
    instead, ``a_c + b_c exp(-|I_i - I_j|^2 / 2 sigma^2)`` per class (:func:`~structseg.structured.contrast.
    contrast_rewards`; ``I`` the network's normalized input, ``sigma`` = ``contrast_sigma``), a contrast-sensitive
    Potts model whose 2K weights the hinge learns; ``contrast_constant=False`` holds ``a_c`` at 0 (an edge across a
    colour boundary pays almost nothing), ``attractive=True`` clips the rewards at 0 (a Potts metric, the energy
    alpha-expansion minimises with its guarantee). Edges follow :func:`~structseg.structured.problem.grid_edges`
    (4, 8 or a range box), each undirected edge once, first end = the earlier pixel in row-major order.

    ``solver`` / ``solver_options`` choose the inference used by ``loss`` and
    ``predict``; ``loss_normalize`` divides each image's hinge by its number of
    labelled nodes (so the scale matches per-pixel losses). ``margin``: a wrong node's Hamming loss (times its class
    weight); over unaries that are not learnt (``train_unary`` off) it sets how strong the pairwise terms grow.

    ``grid="features"`` puts the nodes on the feature grid; ``grid="input"`` on the pixels of the network's input
    (unary scores bilinearly upsampled to it, the prior at its own resolution, the truth at full detail), so the
    pairwise terms act at the resolution the labels are scored at and thin structures exist in the hinge. The
    methods that build potentials take the network's input as ``image`` (needed by "contrast" and grid "input").

    ``upsample`` says how ``predict`` brings the grid's MAP to a finer ``size``: ``"nearest"`` repeats its labels;
    ``"refine"`` gives each fine pixel the best label under its own bilinearly upsampled unary scores plus the
    pairwise reward the MAP's labels would pay it (the MAP's support, upsampled): one conditional-mode step at the
    fine resolution, so boundaries and thin structures follow the unaries while the MAP decides the rest. Without
    pairwise terms "refine" is the unaries' argmax at ``size``.
    """

    needs_image = True  # contrast terms and the input grid read the network's input
    class_weights: Tensor | None

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        pairwise: str = "agreement",
        connectivity: int | tuple[int, int] = 4,
        ignore_index: int = 255,
        solver: str = DEFAULT_SOLVER,
        solver_options: dict[str, Any] | None = None,
        class_weights: Tensor | None = None,
        loss_normalize: bool = True,
        downsample: str = "majority",
        upsample: str = "nearest",
        grid: str = "features",
        contrast_sigma: float = 0.3,
        contrast_constant: bool = True,
        attractive: bool = False,
        margin: float = 1.0,
    ) -> None:
        super().__init__()
        if margin <= 0:
            raise ConfigError(f"model.structured.margin must be > 0, got {margin}")
        self.margin = float(margin)
        if pairwise not in ("agreement", "full", "contrast"):
            raise SolverError(f"pairwise must be 'agreement', 'full' or 'contrast', got {pairwise!r}")
        if grid not in ("features", "input"):
            raise ConfigError(f"model.structured.grid must be 'features' or 'input', got {grid!r}")
        if contrast_sigma <= 0:
            raise ConfigError(f"model.structured.contrast_sigma must be > 0, got {contrast_sigma}")
        self.grid, self.contrast_sigma, self.form = grid, float(contrast_sigma), pairwise
        self.contrast_constant = bool(contrast_constant)
        if (attractive or not contrast_constant) and pairwise != "contrast":
            raise ConfigError(f"model.structured.attractive and contrast_constant need pairwise=contrast: {pairwise!r}")
        self.attractive = bool(attractive)
        if upsample not in ("nearest", "refine"):
            raise ConfigError(f"model.structured.upsample must be 'nearest' or 'refine', got {upsample!r}")
        self.upsample = upsample
        self.num_classes = num_classes
        self.kind = "full" if pairwise == "full" else "agreement"  # the problems' pairwise form
        self.connectivity = connectivity
        self.ignore_index = ignore_index
        self.solver = solver
        self.solver_options = dict(solver_options or {})
        self.loss_normalize = loss_normalize
        self.downsample = downsample
        self.unary = guard_bf16_conv_defect(nn.Conv2d(in_channels, num_classes, kernel_size=1))
        width = num_classes * num_classes if pairwise == "full" else num_classes
        self.pairwise = nn.Linear(2 * in_channels, width)
        nn.init.zeros_(self.pairwise.weight)
        nn.init.zeros_(self.pairwise.bias)
        if pairwise == "contrast":  # (a_c, b_c) per class; the feature pairwise layer goes unused
            self.pairwise.requires_grad_(False)
            self.contrast = nn.Parameter(torch.zeros(2, num_classes))
        self.register_buffer("class_weights", None if class_weights is None else torch.as_tensor(
            class_weights, dtype=torch.float32), persistent=False)  # the loss's, not the model's (no state dict)
        self._edges: dict[tuple[int, int], np.ndarray] = {}

    # ------------------------------------------------------------------ potentials
    def edges(self, h: int, w: int) -> np.ndarray:
        """Edge list (E, 2) of an h x w feature grid (cached)."""
        key = (h, w)
        if key not in self._edges:
            check_fits(self.connectivity, h, w, "model.structured.connectivity")
            self._edges[key] = grid_edges(h, w, self.connectivity)
        return self._edges[key]

    def forward(self, features: Tensor, prior: Tensor | None = None) -> Tensor:
        """Unary scores (N, K, h, w) on the feature grid."""
        return add_prior(cast(Tensor, self.unary(features)), prior)

    def grid_size(self, features: Tensor, image: Tensor | None) -> tuple[int, int]:
        """The (h, w) of the MAP problem: the feature grid, or the input's pixels (``grid="input"``)."""
        if self.grid == "features":
            return spatial_size(features)
        if image is None:
            raise ConfigError("model.structured.grid=input needs the network's input (image=...)")
        return spatial_size(image)

    def potentials(self, features: Tensor, prior: Tensor | None = None,
                   image: Tensor | None = None) -> tuple[Tensor, Tensor, np.ndarray]:
        """Unary (N, h*w, K), pairwise (N, E, K) or (N, E, K, K), edges (E, 2) on the problem's grid."""
        n, c = features.shape[:2]
        h, w = self.grid_size(features, image)
        edges = self.edges(h, w)
        unary = add_prior(scores_at(cast(Tensor, self.unary(features)), (h, w)), prior)
        unary = unary.flatten(2).transpose(1, 2)
        src = torch.as_tensor(edges[:, 0], device=features.device)
        dst = torch.as_tensor(edges[:, 1], device=features.device)
        if self.form == "contrast":
            if image is None:
                raise ConfigError("model.structured.pairwise=contrast needs the network's input (image=...)")
            pair = contrast_rewards(image, (h, w), src, dst, self.contrast, self.contrast_sigma,
                                    constant=self.contrast_constant, attractive=self.attractive)
            return unary, pair, edges
        w1, w2 = self.pairwise.weight[:, :c], self.pairwise.weight[:, c:]
        side1 = scores_at(torch.einsum("kc,nchw->nkhw", w1, features), (h, w)).flatten(2).transpose(1, 2)
        side2 = scores_at(torch.einsum("kc,nchw->nkhw", w2, features), (h, w)).flatten(2).transpose(1, 2)
        pair = side1[:, src] + side2[:, dst] + self.pairwise.bias
        if self.kind == "full":
            pair = pair.reshape(n, len(edges), self.num_classes, self.num_classes)
        return unary, pair, edges

    def _masked(self, unary: Tensor, pair: Tensor, edges: np.ndarray, valid: Tensor | None) -> tuple[Tensor, Tensor]:
        if valid is None:
            return unary, pair
        src = torch.as_tensor(edges[:, 0], device=unary.device)
        dst = torch.as_tensor(edges[:, 1], device=unary.device)
        keep_e = (valid[:, src] & valid[:, dst]).to(pair.dtype)
        keep_e = keep_e.reshape(keep_e.shape + (1,) * (pair.dim() - 2))
        return unary * valid.unsqueeze(-1).to(unary.dtype), pair * keep_e

    def _score(self, unary: Tensor, pair: Tensor, edges: np.ndarray, labels: Tensor) -> Tensor:
        """S(y) per image (N,) from potentials; labels (N, h*w) in 0..K-1."""
        src = torch.as_tensor(edges[:, 0], device=unary.device)
        dst = torch.as_tensor(edges[:, 1], device=unary.device)
        s = unary.gather(2, labels.unsqueeze(-1)).squeeze(-1).sum(1)
        if len(edges) == 0:
            return s
        yi, yj = labels[:, src], labels[:, dst]
        if self.kind == "agreement":
            p = pair.gather(2, yi.unsqueeze(-1)).squeeze(-1) * (yi == yj).to(pair.dtype)
        else:
            k = self.num_classes
            p = pair.flatten(2).gather(2, (yi * k + yj).unsqueeze(-1)).squeeze(-1)
        return s + p.sum(1)

    def score(self, features: Tensor, labels: Tensor, ignore_index: int | None = None,
              prior: Tensor | None = None, image: Tensor | None = None) -> Tensor:
        """Differentiable S(y) per image (N,); labels (N, h, w). Nodes labelled ``ignore_index`` and their edges
        count 0."""
        unary, pair, edges = self.potentials(features, prior, image)
        y = labels.flatten(1)
        valid = None
        if ignore_index is not None:
            valid = y != ignore_index
            unary, pair = self._masked(unary, pair, edges, valid)
            y = torch.where(valid, y, torch.zeros_like(y))
        return self._score(unary, pair, edges, y)

    def problems(self, features: Tensor, valid: Tensor | None = None, prior: Tensor | None = None,
                 image: Tensor | None = None) -> list[LabelingProblem]:
        """One detached numpy :class:`LabelingProblem` per image."""
        with torch.no_grad():
            unary, pair, edges = self.potentials(features, prior, image)
            unary, pair = self._masked(unary, pair, edges, valid)
        return self._to_problems(unary, pair, edges, self.grid_size(features, image))

    def _to_problems(self, unary: Tensor, pair: Tensor, edges: np.ndarray,
                     shape: tuple[int, int]) -> list[LabelingProblem]:
        u = unary.detach().double().cpu().numpy()
        p = pair.detach().double().cpu().numpy()
        return [LabelingProblem(u[i], edges, p[i], kind=self.kind, shape=shape) for i in range(len(u))]

    # ------------------------------------------------------------------ loss and prediction
    def truth_at(self, target: Tensor, size: tuple[int, int]) -> Tensor:
        """The target (N, H, W) on the feature grid, ignore handled (see module docstring)."""
        return cast(Tensor, downsample_labels(target, size, self.num_classes, self.ignore_index, self.downsample))

    def structured_hinge_loss(self, features: Tensor, truth: Tensor, solver: str | None = None,
                              reduction: str = "mean", prior: Tensor | None = None,
                              image: Tensor | None = None, **solver_options: Any) -> Tensor:
        """max_y [Delta(y, y*) + S(y)] - S(y*) per image; ``truth`` (N, h, w) on the problem's grid.

        The maximiser is found by loss-augmented inference on detached
        potentials. With an approximate solver the hinge is a lower bound; if
        the solver's answer scores below the truth, the truth is used (loss 0).
        """
        n = features.shape[0]
        h, w = self.grid_size(features, image)
        if tuple(truth.shape) != (n, h, w):
            raise SolverError(f"truth must be (N, h, w) = {(n, h, w)} on the problem's grid, got {tuple(truth.shape)}")
        k = self.num_classes
        y_star = truth.flatten(1)
        valid = (y_star != self.ignore_index) & (y_star >= 0) & (y_star < k)
        y_star = torch.where(valid, y_star, torch.zeros_like(y_star))
        costs, counts_t = hamming_costs(self.class_weights, self.margin, y_star, valid, k)
        counts = counts_t.cpu().numpy()
        unit = self.class_weights is None and self.margin == 1.0  # the solvers' own unit Hamming loss
        weights = None if unit else costs.cpu().numpy()
        truth_np = torch.where(valid, y_star, torch.full_like(y_star, -1)).cpu().numpy()
        opts = {**self.solver_options, **solver_options}
        unary, pair, edges = self.potentials(features, prior, image)
        unary, pair = self._masked(unary, pair, edges, valid)
        problems = self._to_problems(unary, pair, edges, (h, w))  # detached: the solver sees constants
        results = infer_batch(problems, solver or self.solver, loss_augment_truths=list(truth_np),
                              loss_class_weights=weights, **opts)
        star_np = y_star.cpu().numpy()
        y_hat, deltas = [], []
        for i, r in enumerate(results):
            if r.score < problems[i].score(star_np[i]):  # the solver missed: the truth is a better maximiser
                y_hat.append(star_np[i])
                deltas.append(0.0)
            else:
                y_hat.append(np.asarray(r.labels).reshape(-1))
                deltas.append(r.info["loss"])
        y_hat_t = torch.as_tensor(np.stack(y_hat), device=features.device)
        margin = self._score(unary, pair, edges, y_hat_t) - self._score(unary, pair, edges, y_star)
        loss = margin + torch.as_tensor(deltas, dtype=margin.dtype, device=margin.device)
        if self.loss_normalize:
            loss = loss / torch.as_tensor(counts, dtype=loss.dtype, device=loss.device)
        if reduction == "none":
            return loss
        return loss.sum() if reduction == "sum" else loss.mean()

    def loss(self, features: Tensor, target: Tensor, prior: Tensor | None = None,
             image: Tensor | None = None) -> Tensor:
        """Structured hinge against ``target`` at any resolution (brought to the problem's grid)."""
        truth = self.truth_at(target, self.grid_size(features, image))
        return self.structured_hinge_loss(features, truth, prior=prior, image=image)

    @torch.no_grad()
    def predict(self, features: Tensor, size: tuple[int, int] | None = None, solver: str | None = None,
                prior: Tensor | None = None, image: Tensor | None = None, **solver_options: Any) -> Tensor:
        """MAP labels (N, h, w) on the problem's grid, or brought to ``size`` as ``upsample`` says."""
        h, w = self.grid_size(features, image)
        opts = {**self.solver_options, **solver_options}
        unary, pair, edges = self.potentials(features, prior, image)  # once: the MAP and refine's support share them
        results = infer_batch(self._to_problems(unary, pair, edges, (h, w)), solver or self.solver, **opts)
        labels = torch.as_tensor(np.stack([np.asarray(r.labels).reshape(h, w) for r in results]),
                                 device=features.device)
        if size is None or tuple(size) == (h, w):
            return labels
        if self.upsample == "nearest":
            return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
        fine = F.interpolate(self.unary(features), size=size, mode="bilinear", align_corners=False)
        support = F.interpolate(self._support(pair, edges, labels), size=size, mode="bilinear", align_corners=False)
        return (add_prior(fine, prior) + support).argmax(1)

    def support(self, features: Tensor, labels: Tensor, image: Tensor | None = None) -> Tensor:
        """(N, K, h, w): for each node and label, the pairwise score it would get from its neighbours' ``labels``
        (N, h, w)."""
        _, pair, edges = self.potentials(features, image=image)
        return self._support(pair, edges, labels)

    def _support(self, pair: Tensor, edges: np.ndarray, labels: Tensor) -> Tensor:
        n, h, w = labels.shape
        y = labels.flatten(1)
        src = torch.as_tensor(edges[:, 0], device=pair.device)
        dst = torch.as_tensor(edges[:, 1], device=pair.device)
        k = self.num_classes
        if self.kind == "agreement":  # reward pair[e, c] when both ends take c
            to_src = pair * F.one_hot(y[:, dst], k).to(pair.dtype)
            to_dst = pair * F.one_hot(y[:, src], k).to(pair.dtype)
        else:  # pair[e, a, b] for (src, dst) = (a, b)
            to_src = pair.gather(3, y[:, dst].view(n, -1, 1, 1).expand(-1, -1, k, 1)).squeeze(3)
            to_dst = pair.gather(2, y[:, src].view(n, -1, 1, 1).expand(-1, -1, 1, k)).squeeze(2)
        total = torch.zeros(n, h * w, k, dtype=pair.dtype, device=pair.device)
        total.index_add_(1, src, to_src).index_add_(1, dst, to_dst)
        return total.transpose(1, 2).reshape(n, k, h, w)


def _float32(device: torch.device) -> torch.autocast:
    """Autocast off: the hinge, its loss-augmented inference and MAP decoding run in float32."""
    return torch.autocast(device_type=device.type, enabled=False)


class StructuredSegmenter(NetworkWrapper):
    """``base_model`` (anything with ``forward_features(x)["features"]``) + an SVM head; state-dict keys
    ``base.*`` and ``head.*``.

    - ``model(x)`` -> unary scores bilinearly upsampled to the input size (N, K, H, W); ``model(x, target)``
      -> the head's loss (so DistributedDataParallel sees the forward pass that builds the graph), also
      ``loss(x, target)``;
    - ``predict(x, size=None)`` -> MAP labels (N, *size) (default: the input size) by the head's inference,
      with ``eval_solver`` when set;
    - features (they never include a base model's ``size_divisor`` padding) are average-pooled by
      ``feature_stride`` (ceil mode) before the head; the head runs in float32 outside autocast, the base
      model keeps the fast path;
    - ``residual=True``: the network's own logits are the head's ``prior`` (its unary layer starts at zero, so
      the model starts as the network and the head learns a correction and, for ssvm, pairwise terms);
      ``train_backbone=False`` keeps the network frozen (in eval mode); ``train_unary=False`` (residual only) keeps
      the head's unary layer at zero, so the unaries are the network's logits and only pairwise terms learn.

    ``backbone`` is the base model's encoder (when it has one) so optimiser groups keep working; the base
    model's own classifier goes unused.
    """

    map_inference = True
    trains_own_loss = True

    def __init__(self, base_model: SegmentationModel, head: LinearSVMHead | StructuredSVMHead | DenseSSVMHead, *,
                 feature_stride: int = 1, eval_solver: str | None = None, residual: bool = False,
                 train_backbone: bool = True, train_unary: bool = True) -> None:
        super().__init__(base_model, feature_stride=feature_stride, train_backbone=train_backbone,
                         what="an SVM head")
        self.head = head
        self.eval_solver = eval_solver
        self.residual = bool(residual)
        unary = head.classifier if isinstance(head, LinearSVMHead) else head.unary
        if self.residual:
            zero_layers(unary)
        elif not train_unary:
            raise ConfigError("model.structured.train_unary=false needs model.structured.residual=true: without the "
                              "network's logits the unary scores would stay 0")
        if not train_unary:  # the unaries are the network's logits; the hinge learns the pairwise terms
            unary.requires_grad_(False)

    def _inputs(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """The pooled features in float32 and, in the residual form, the network's logits (the prior)."""
        if not self.residual:
            return self.features(x).float(), None
        feats, logits = self.features_and_logits(x)
        return feats.float(), logits.float()

    @property
    def num_classes(self) -> int:
        return int(self.head.num_classes)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        feats, prior = self._inputs(x)
        with _float32(x.device):
            out = F.interpolate(self.head(feats), size=x.shape[-2:], mode="bilinear", align_corners=False)
            out = add_prior(out, prior)
        return {"out": out, "features": feats}

    def forward(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        if target is None:
            return self.forward_features(x)["out"]
        return self.loss(x, target)

    def _image(self, x: Tensor) -> dict[str, Tensor]:
        """The network's input for an ssvm head (its contrast terms and input grid)."""
        return {"image": x} if getattr(self.head, "needs_image", False) else {}

    def loss(self, x: Tensor, target: Tensor) -> Tensor:
        feats, prior = self._inputs(x)
        with _float32(x.device):
            return self.head.loss(feats, target, prior=prior, **self._image(x))

    @torch.no_grad()
    def problems(self, x: Tensor) -> list[LabelingProblem]:
        """The MAP problem of each image on the head's grid (an ssvm head), e.g. to compare solvers on them."""
        if not isinstance(self.head, StructuredSVMHead):
            raise ConfigError("problems() needs an ssvm head on a sparse graph (a linear SVM head has no pairwise "
                              "terms; a dense one has no labeling problem to hand to a solver)")
        feats, prior = self._inputs(x)
        with _float32(x.device):
            return self.head.problems(feats, prior=prior, image=x)

    @torch.no_grad()
    def predict(self, x: Tensor, size: tuple[int, int] | None = None, **solver_options: Any) -> Tensor:
        feats, prior = self._inputs(x)
        out_size = (int(size[0]), int(size[1])) if size is not None else spatial_size(x)
        if self.eval_solver is not None and isinstance(self.head, StructuredSVMHead):
            solver_options.setdefault("solver", self.eval_solver)
        solver_options.update(self._image(x))
        with _float32(x.device):
            return self.head.predict(feats, size=out_size, prior=prior, **solver_options)
