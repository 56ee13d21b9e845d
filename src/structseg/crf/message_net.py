"""CNN message estimators (Lin, Shen, Reid & van den Hengel, NIPS 2015, "Deeply learning the messages in message
passing inference").

Instead of learning potentials and running iterated inference, a network estimates each factor-to-variable
message directly. On the feature grid, every node ``p`` receives one message from its unary factor and one from
each pairwise factor ``F = {p, q}`` of every edge type (Lin et al.'s "surrounding" and "above/below" boxes): the
message ``M_F(x_pF, d_pF)`` is a K-vector computed from the features of the factor's nodes (``f_p``, ``f_q``) and
its relation to ``p`` (``d_pF``: the offset of ``q`` seen from ``p``, an embedding per offset and direction). The
node's marginal is the softmax of its messages (the unary one plus the mean of the pairwise ones per edge type),
and training is the cross-entropy of that marginal against the truth. Inference is one estimation pass.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structseg.errors import ConfigError
from structseg.graph import check_fits, downsample_labels, grid_edges_tensor
from structseg.models.wrapper import NetworkWrapper, zero_layers

__all__ = ["MessageEstimator", "MessageNetModel"]

if TYPE_CHECKING:
    from structseg.models.base import SegmentationModel


class _EdgeMessages(nn.Module):
    """Messages of one edge type into both ends of every edge: ``relu(A f_to + B f_from + e_offset) -> K``."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int, offsets: Sequence[tuple[int, int]]) -> None:
        super().__init__()
        self.offsets = [tuple(o) for o in offsets]
        self.to_node = nn.Conv2d(in_channels, hidden, 1)
        self.from_node = nn.Conv2d(in_channels, hidden, 1, bias=False)
        self.relation = nn.Embedding(2 * len(self.offsets), hidden)  # offset seen from the receiving node
        self.out = nn.Linear(hidden, num_classes)
        self._edge_cache: dict[tuple[int, int, str], tuple[Tensor, Tensor]] = {}

    def edges(self, h: int, w: int, device: torch.device, setting: str) -> tuple[Tensor, Tensor]:
        """Edges (E, 2) of the grid and the offset index of each (its position in ``offsets``)."""
        key = (h, w, str(device))
        if key not in self._edge_cache:
            check_fits(self.offsets, h, w, setting)
            parts, kinds = [], []
            for i, offset in enumerate(self.offsets):
                e = grid_edges_tensor(h, w, [offset], device)
                parts.append(e)
                kinds.append(torch.full((e.shape[0],), i, dtype=torch.long, device=device))
            self._edge_cache[key] = (torch.cat(parts), torch.cat(kinds))
        return self._edge_cache[key]

    def forward(self, features: Tensor, setting: str) -> tuple[Tensor, Tensor]:
        """(sum of the messages into each node (N, V, K), number of messages into each node (V,))."""
        n, _, h, w = features.shape
        edges, kind = self.edges(h, w, features.device, setting)
        a = self.to_node(features).flatten(2)  # (N, H, V)
        b = self.from_node(features).flatten(2)
        src, dst = edges[:, 0], edges[:, 1]
        # into dst from the factor {src, dst}: offset index i; into src: index i + len(offsets) (the reverse)
        into_dst = a.index_select(2, dst) + b.index_select(2, src) + self.relation(kind).t()[None]
        into_src = a.index_select(2, src) + b.index_select(2, dst) + self.relation(kind + len(self.offsets)).t()[None]
        messages = self.out(torch.cat([into_dst, into_src], 2).transpose(1, 2).relu())  # (N, 2E, K)
        receivers = torch.cat([dst, src])
        v = h * w
        total = messages.new_zeros(n, v, messages.shape[-1]).index_add(1, receivers, messages)
        count = torch.zeros(v, device=features.device).index_add(0, receivers, torch.ones_like(receivers,
                                                                                              dtype=torch.float32))
        return total, count


class MessageEstimator(nn.Module):
    """The message networks on a feature map: ``forward(features) -> node logits (N, K, h, w)`` (the log of the
    unnormalized marginals: the unary message plus, per edge type, the mean of the pairwise messages)."""

    def __init__(self, in_channels: int, num_classes: int, *, hidden: int = 64,
                 edge_types: Mapping[str, Sequence[tuple[int, int]]] | None = None) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 2 or hidden < 1:
            raise ConfigError(f"message estimators need in_channels >= 1, num_classes >= 2 and hidden >= 1; got "
                              f"{in_channels}, {num_classes}, {hidden}")
        from structseg.graph import above_below_offsets, surrounding_offsets

        if edge_types is None:
            edge_types = {"surrounding": surrounding_offsets(2), "above_below": above_below_offsets(3, 1)}
        self.num_classes = num_classes
        self.unary = nn.Sequential(nn.Conv2d(in_channels, hidden, 1), nn.ReLU(inplace=True),
                                   nn.Conv2d(hidden, num_classes, 1))
        self.pairwise = nn.ModuleDict({name: _EdgeMessages(in_channels, num_classes, hidden, offs)
                                       for name, offs in edge_types.items()})

    def start_neutral(self) -> None:
        """Zero the last layers: every message starts at 0 (the residual form, which adds them to the network's
        own logits)."""
        zero_layers(self.unary[-1], *(cast(_EdgeMessages, net).out for net in self.pairwise.values()))

    def forward(self, features: Tensor) -> Tensor:
        n, _, h, w = features.shape
        logits = self.unary(features).flatten(2).transpose(1, 2)  # (N, V, K)
        for name, net in self.pairwise.items():
            total, count = net(features, f"model.cnn_crf ({name} edges)")
            logits = logits + total / count.clamp_min(1)[None, :, None]
        return logits.transpose(1, 2).reshape(n, self.num_classes, h, w)


class MessageNetModel(NetworkWrapper):
    """A segmentation network with message estimators on its penultimate features: the engine's
    ``model.head: message_net``; state-dict keys ``base.*`` and ``crf.*``.

    - ``residual=False`` (Lin et al.): ``model(x, target)`` -> the cross-entropy of the estimated marginals against
      ``target`` reduced to the feature grid; ``model(x)`` -> the marginals' log-probabilities bilinearly upsampled
      to the input size.
    - ``residual=True``: the network's own logits are the unary factor's message and the estimators add to it (they
      start at zero): ``model(x)`` -> the network's logits plus the bilinearly upsampled sum of the estimated
      messages, ``model(x, target)`` -> its cross-entropy at the input size, so context is learnt without giving
      up the network's resolution.

    ``class_weights`` (set by the trainer from ``data.class_weights``) weight the cross-entropy. Features are
    average-pooled by ``feature_stride``.
    """

    trains_own_loss = True

    def __init__(self, base: SegmentationModel, num_classes: int, *, train_backbone: bool = True,
                 feature_stride: int = 1, residual: bool = False, ignore_index: int = 255, **options: Any) -> None:
        super().__init__(base, feature_stride=feature_stride, train_backbone=train_backbone,
                         what="message estimators")
        self.ignore_index, self.residual = ignore_index, bool(residual)
        self.class_weights: Tensor | None = None
        self.crf = MessageEstimator(int(base.feature_channels), num_classes, **options)
        if self.residual:
            self.crf.start_neutral()

    @property
    def num_classes(self) -> int:
        return self.crf.num_classes

    def forward(self, images: Tensor, target: Tensor | None = None) -> Tensor:
        features, network_logits = self.features_and_logits(images)
        size = images.shape[-2:]
        with torch.autocast(device_type=images.device.type, enabled=False):
            messages = self.crf(features.float())
            if self.residual:
                logits = network_logits.float() + F.interpolate(messages, size=size, mode="bilinear",
                                                                align_corners=False)
                return logits if target is None else self.cross_entropy(logits, target.to(logits.device))
            if target is not None:
                k, grid = self.num_classes, (messages.shape[-2], messages.shape[-1])
                return self.cross_entropy(messages, downsample_labels(target.to(messages.device), grid, k,
                                                                       self.ignore_index))
            marginals = F.interpolate(messages.softmax(1), size=size, mode="bilinear", align_corners=False)
            return torch.log(marginals.clamp_min(1e-8))
