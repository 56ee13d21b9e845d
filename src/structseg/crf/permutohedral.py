"""Permutohedral lattice: fast high-dimensional Gaussian filtering.

Adams, Baek & Davis (2010), "Fast high-dimensional filtering using the
permutohedral lattice", in the variant used by Krähenbühl & Koltun's dense CRF
code (pydensecrf): every point is splatted onto the ``d + 1`` corners of its
enclosing simplex, the lattice is blurred with ``[1/2, 1, 1/2]`` along each of
the ``d + 1`` lattice directions, and values are sliced back with the same
barycentric weights. The lattice is built once from the features (no gradient)
and reused for any number of channels and filter calls, which is what makes
mean-field inference cheap: all ``K`` label channels are filtered together.

Everything is vectorised torch. Building: the point-wise simplex search runs in
cache-sized chunks; points are grouped by simplex (one sort of integer codes),
then the simplices' corners are deduplicated into vertices (a second, much
smaller sort) and neighbours are found by binary search on the sorted vertex
codes: no Python hash table. Filtering: splat and slice are ``embedding_bag``
calls (fused gather + weighted sum, no scatter) and each blur pass is one more.
Several images are built into one lattice whose vertex codes carry the image
index, so a batch is one filter call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from structseg.errors import SolverError

__all__ = ["PermutohedralLattice", "build_lattice"]

_MAX_CODE = 2**62
_CHUNK = 65536


@dataclass
class PermutohedralLattice:
    """The sparse lattice of one or more point sets, ready for filtering.

    ``slice_index`` / ``slice_weight`` (P, S) hold, for each point, the vertex ids
    and barycentric weights of the corners it touches. Splatting runs in two
    ``embedding_bag`` steps: points are summed into groups (one per simplex and
    corner: ``splat_points``, ``splat_weight``, ``splat_offsets``), then groups into
    vertices (``group_index``, ``group_offsets``, ending with one empty bag).
    Lattice values are (M + 1, C) with a last row that stays zero: ``blur_index``
    (R, M + 1, 3) holds, for each blur pass, ``[self, +neighbour, -neighbour]``
    ids with ``M`` for a missing one.
    """

    num_points: int
    num_vertices: int
    slice_index: Tensor
    slice_weight: Tensor
    splat_points: Tensor
    splat_weight: Tensor
    splat_offsets: Tensor
    group_index: Tensor
    group_offsets: Tensor
    blur_index: Tensor

    @property
    def device(self) -> torch.device:
        return self.slice_index.device

    def splat(self, values: Tensor, weight: Tensor | None = None) -> Tensor:
        """Scatter point values (P, C) onto the vertices: (M + 1, C), last row zero.

        ``weight`` replaces ``splat_weight`` (e.g. with a normalization folded in)."""
        groups = F.embedding_bag(
            self.splat_points,
            values,
            self.splat_offsets,
            mode="sum",
            per_sample_weights=self.splat_weight if weight is None else weight,
        )
        return F.embedding_bag(self.group_index, groups, self.group_offsets, mode="sum")

    def blur(self, vertex_values: Tensor) -> Tensor:
        """Blur (M + 1, C) lattice values with [1/2, 1, 1/2] along every lattice direction."""
        weights = self._blur_weights(vertex_values.dtype)
        out = vertex_values
        for pass_index in range(self.blur_index.shape[0]):
            out = F.embedding_bag(
                self.blur_index[pass_index], out, mode="sum", per_sample_weights=weights
            )
        return out

    def slice(self, vertex_values: Tensor, weight: Tensor | None = None) -> Tensor:
        """Gather lattice values back to the points: (P, C)."""
        return F.embedding_bag(
            self.slice_index,
            vertex_values,
            mode="sum",
            per_sample_weights=self.slice_weight if weight is None else weight,
        )

    def filter(self, values: Tensor) -> Tensor:
        """Unnormalized Gaussian filter of point values (P, C) -> (P, C)."""
        return self.slice(self.blur(self.splat(values.to(self.slice_weight.dtype))))

    def to(self, dtype: torch.dtype) -> PermutohedralLattice:
        """The same lattice with weights of another float dtype (e.g. float64 for gradcheck)."""
        return replace(self, slice_weight=self.slice_weight.to(dtype), splat_weight=self.splat_weight.to(dtype))

    def _blur_weights(self, dtype: torch.dtype) -> Tensor:
        cache = self.__dict__.setdefault("_blur_weight_cache", {})
        if dtype not in cache:
            one = torch.tensor([1.0, 0.5, 0.5], dtype=dtype, device=self.device)
            cache[dtype] = one.repeat(self.num_vertices + 1).view(self.num_vertices + 1, 3)
        return cache[dtype]


def _elevate(features: Tensor) -> Tensor:
    """Project (d, P) features onto the hyperplane sum(x) = 0 in R^(d+1): (d+1, P)."""
    d = features.shape[0]
    inv_std = math.sqrt(2.0 / 3.0) * (d + 1)
    scale = [inv_std / math.sqrt((i + 1) * (i + 2)) for i in range(d)]
    scaled = [features[i] * scale[i] for i in range(d)]
    elevated = features.new_empty(d + 1, features.shape[1])
    running = torch.zeros_like(features[0])
    for j in range(d, 0, -1):
        torch.sub(running, scaled[j - 1], alpha=j, out=elevated[j])
        running += scaled[j - 1]
    elevated[0].copy_(running)
    return elevated


def _simplices(features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Enclosing simplex of every point of (d, P) features.

    Returns the remainder-0 corner in units of d+1 (d, P, integral floats), the rank
    of each coordinate (d+1, P) int16 and the barycentric weights (d+1, P)."""
    d = features.shape[0]
    d1 = d + 1
    elevated = _elevate(features)
    down_factor = 1.0 / d1
    # nearest multiple of d+1 (in units of d+1), ties to the lower one as in Adams et al.
    corner = torch.ceil(elevated * down_factor - 0.5)
    total = corner.sum(0)
    diff = elevated - corner * d1
    # rank[i] = #{j > i: diff_j > diff_i} + #{j < i: diff_j >= diff_i}, counted in uint8
    # from rank[i] = i (no dtype conversions in the loop; never negative on the way)
    rank = torch.arange(d1, dtype=torch.uint8, device=diff.device)[:, None].repeat(1, diff.shape[1])
    for i in range(d):
        for j in range(i + 1, d1):
            less = torch.lt(diff[i], diff[j]).view(torch.uint8)
            rank[i].add_(less)
            rank[j].sub_(less)
    rank = rank.to(torch.int16) + total.to(torch.int16)
    # a point off the plane sum = 0 moves one corner: wrap the rank into 0..d
    wrapped = torch.where(rank < 0, rank + d1, torch.where(rank > d, rank - d1, rank))
    moved = (wrapped - rank).to(diff.dtype)
    corner += moved / d1
    value = diff.sub_(moved).mul_(down_factor)
    # by_rank[d - q] = value of the coordinate of rank q; then (Adams et al.)
    # bary[k] = u[d - k] - u[d - k + 1] and bary[0] = 1 + u[d] - u[0] with u[q] = by_rank[d - q]
    by_rank = torch.empty_like(value).scatter_(0, (d - wrapped).long(), value)
    bary = torch.empty_like(value)
    torch.sub(by_rank[1:], by_rank[:-1], out=bary[1:])
    torch.sub(by_rank[0], by_rank[d], out=bary[0]).add_(1.0)
    return corner[:d], wrapped, bary


def _multipliers(radices: list[int], what: str) -> list[int]:
    """Place values of a mixed-radix code; refuses codes that would overflow int64."""
    if math.prod(radices) >= _MAX_CODE:
        raise SolverError(
            f"lattice too large to index ({what}): the features span too wide a range "
            "for these kernel widths"
        )
    out = [1]
    for r in radices[:-1]:
        out.append(out[-1] * r)
    return out


def _group_sorted(codes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sort codes (int32 sorts faster when the range allows); return the order, the
    group id of each sorted entry and the group starts."""
    sorted_codes, order = torch.sort(codes, stable=True)
    is_new = torch.ones_like(sorted_codes, dtype=torch.bool)
    torch.ne(sorted_codes[1:], sorted_codes[:-1], out=is_new[1:])
    group = is_new.cumsum(0) - 1
    starts = torch.nonzero(is_new).squeeze(1)
    return order, group, starts


def build_lattice(features: Tensor) -> PermutohedralLattice:
    """Build the lattice of ``features`` (B, P, d) or (P, d), already divided by the
    kernel widths (unit standard deviation). Points of different batch items never
    share a vertex. Runs without gradient."""
    with torch.no_grad():
        return _build(features)


def _build(features: Tensor) -> PermutohedralLattice:
    if features.dim() == 2:
        features = features.unsqueeze(0)
    if features.dim() != 3 or features.shape[-1] < 1 or features.shape[1] < 1:
        raise SolverError(f"lattice features must be (B, P, d) with P, d >= 1, got {tuple(features.shape)}")
    if not (torch.isfinite(features.amax()) and torch.isfinite(features.amin())):
        raise SolverError("lattice features contain NaN or infinity")
    batch, points, d = features.shape
    d1 = d + 1
    n = batch * points
    device = features.device
    feats = features.to(torch.float32).permute(2, 0, 1).reshape(d, n)
    # Point-wise work runs in chunks that stay in cache: several times faster on CPU
    # than whole-image passes over (d+1, P) temporaries.
    chunks = [(start, min(start + _CHUNK, n)) for start in range(0, n, _CHUNK)]
    corner = torch.empty(d, n, dtype=torch.int32, device=device)
    rank = torch.empty(d1, n, dtype=torch.uint8, device=device)
    bary = torch.empty(d1, n, dtype=torch.float32, device=device)
    for start, stop in chunks:
        c, r, b = _simplices(feats[:, start:stop])
        corner[:, start:stop] = c
        rank[:, start:stop] = r
        bary[:, start:stop] = b

    # Points sharing a simplex (same corner and rank) share all d+1 vertices: group
    # them first, so that vertex codes are computed and sorted once per simplex.
    low = corner.amin(1).long() - 2  # vertices reach corner - 1, their neighbours one further
    radix = (corner.amax(1).long() - low + 2).tolist()
    simplex_mult = _multipliers([d1] * d + radix + [batch], "simplices")
    code = torch.empty(n, dtype=torch.int32 if simplex_mult[-1] * batch < 2**31 else torch.long, device=device)
    offset = -sum(int(low[i]) * simplex_mult[d + i] for i in range(d))
    for start, stop in chunks:
        part = torch.full((stop - start,), offset, dtype=torch.long, device=device)
        for i in range(d):
            part += rank[i, start:stop].long() * simplex_mult[i]
            part += corner[i, start:stop].long() * simplex_mult[d + i]
        if batch > 1:
            part += (torch.div(torch.arange(start, stop, device=device), points, rounding_mode="floor")
                     * simplex_mult[2 * d])
        code[start:stop] = part
    order, simplex_sorted, starts = _group_sorted(code)
    num_simplices = starts.numel()
    simplex_of_point = torch.empty_like(simplex_sorted).scatter_(0, order, simplex_sorted)
    rep = order.index_select(0, starts)

    # Vertex r of a simplex has key coordinates (d+1) * (corner - [rank > d - r]) + r:
    # coded as the digits (r, corner digits, image) in a mixed radix.
    vertex_mult = _multipliers([d1] + radix + [batch], "vertices")
    mult = torch.tensor(vertex_mult[1 : d + 1], dtype=torch.long, device=device)
    rep_rank = rank.index_select(1, rep).long()
    base = ((corner.index_select(1, rep).long() - low[:, None]) * mult[:, None]).sum(0)
    if batch > 1:
        base += torch.div(rep, points, rounding_mode="floor") * vertex_mult[d + 1]
    mult_ext = torch.cat([mult, mult.new_zeros(1)])
    by_rank = torch.empty_like(rep_rank).scatter_(0, rep_rank, mult_ext[:, None].expand(d1, num_simplices))
    vertex_code = torch.empty(num_simplices, d1, dtype=torch.long, device=device)
    shift = torch.zeros_like(base)
    for vertex in range(d1):
        if vertex > 0:
            shift += by_rank[d - vertex + 1]
        torch.sub(base, shift, out=vertex_code[:, vertex]).add_(vertex)
    flat_code = vertex_code.view(-1)
    vorder, vertex_sorted, vstarts = _group_sorted(flat_code.int() if vertex_mult[-1] * batch < 2**31 else flat_code)
    num_vertices = vstarts.numel()
    simplex_vertex = torch.empty_like(vertex_sorted).scatter_(0, vorder, vertex_sorted).view(num_simplices, d1)

    # Splat groups are (corner r, simplex s) in r-major order: bag r*S + s holds the
    # points of simplex s weighted by their r-th barycentric weight.
    group_index = (vorder % d1) * num_simplices + torch.div(vorder, d1, rounding_mode="floor")
    index = torch.int32 if n * d1 < 2**31 else torch.long  # halves index traffic in the filter
    return PermutohedralLattice(
        num_points=n,
        num_vertices=num_vertices,
        slice_index=simplex_vertex.to(index).index_select(0, simplex_of_point),
        slice_weight=bary.t().contiguous(),
        splat_points=order.to(index).repeat(d1),
        splat_weight=bary.index_select(1, order).reshape(-1),
        splat_offsets=(starts + torch.arange(d1, device=device)[:, None] * n).reshape(-1).to(index),
        group_index=group_index.to(index),
        group_offsets=torch.cat([vstarts, vstarts.new_full((1,), vorder.numel())]).to(index),
        blur_index=_neighbours(vertex_code.view(-1)[vorder[vstarts]], mult, d, num_vertices).to(index),
    )


def _neighbours(vertex_codes: Tensor, mult: Tensor, d: int, num_vertices: int) -> Tensor:
    """[self, +neighbour, -neighbour] ids along each of the d+1 directions: (d+1, M+1, 3).

    Along direction j the neighbours of a key are key - 1 with key_j + d, and key + 1
    with key_j - d (all coordinates for j = d); their remainder moves by -1 / +1, so the
    code delta depends only on whether the remainder wraps around. Row M (the zero
    row) points at itself. ``vertex_codes`` must be sorted."""
    d1 = d + 1
    remainder = vertex_codes % d1
    mult_sum = int(mult.sum().item())
    self_index = torch.arange(num_vertices, device=vertex_codes.device)
    out = torch.full((d1, num_vertices + 1, 3), num_vertices, dtype=torch.long, device=vertex_codes.device)
    for j in range(d1):
        m_j = int(mult[j].item()) if j < d else 0
        rest = mult_sum - m_j
        down = torch.where(remainder == 0, d - rest, m_j - 1)
        up = torch.where(remainder == d, rest - d, 1 - m_j)
        for column, delta in ((1, down), (2, up)):
            wanted = vertex_codes + delta
            found = torch.searchsorted(vertex_codes, wanted).clamp_(max=num_vertices - 1)
            hit = vertex_codes[found] == wanted
            out[j, :num_vertices, column] = torch.where(hit, found, num_vertices)
        out[j, :num_vertices, 0] = self_index
    return out
