"""Parallel mean-field inference for fully connected CRFs, and its objective.

The model (Krähenbühl & Koltun 2011) has energy
``E(x) = sum_i U_i(x_i) + sum_m sum_{i,j} k_m(f_i, f_j) mu_m(x_i, x_j)``.
One mean-field step sets ``Q_i = softmax(-U_i - sum_m mu_m (k_m Q)_i)``; the
filtering ``k_m Q`` is done for all labels at once by a kernel operator (see
:class:`structseg.crf.kernels.GaussianKernels`). As in pydensecrf the filter
includes ``j = i``.

A compatibility is a positive number ``w`` (Potts, ``mu = -w I``: a label is
rewarded for agreeing with its neighbours' beliefs, which equals the usual
``w [x_i != x_j]`` penalty up to a per-pixel constant) or a (K, K) penalty
matrix (symmetrised).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from numbers import Real
from typing import Protocol

import torch
from torch import Tensor

__all__ = ["KernelOperator", "Compatibility", "mean_field", "mean_field_scores", "free_energy", "potts_weights"]

Compatibility = float | Tensor


class KernelOperator(Protocol):
    """Linear filters ``k_m`` on point values (P, C)."""

    num_kernels: int

    def apply(self, values: Tensor, weights: Sequence[float]) -> Tensor: ...

    def apply_each(self, values: Tensor) -> list[Tensor]: ...


def potts_weights(compat: Sequence[Compatibility]) -> list[float] | None:
    """The Potts weights if every compatibility is a plain number, else None."""
    if all(isinstance(c, Real) for c in compat):
        return [float(c) for c in compat]
    return None


def _pairwise(kernels: KernelOperator, q: Tensor, compat: Sequence[Compatibility]) -> Tensor:
    """``sum_m (k_m q) mu_m`` as (P, K): the expected pairwise energy of each label."""
    total: Tensor | None = None
    for filtered, c in zip(kernels.apply_each(q), compat):
        if isinstance(c, Tensor) and c.dim() == 2:
            term = filtered @ (0.5 * (c + c.t())).to(filtered)
        else:  # Potts weight w: mu = -w I
            term = filtered * (-c)
        total = term if total is None else total + term
    assert total is not None  # at least one kernel
    return total


def _softmax_kp(scores: Tensor) -> Tensor:
    """Softmax over labels of (K, P) scores, returned as (P, K).

    Softmax along a short last dimension is very slow on CPU, so it runs over
    dim 0 of the label-major layout and is transposed afterwards."""
    return torch.softmax(scores, 0).t().contiguous()


def mean_field(
    unary: Tensor,
    kernels: KernelOperator,
    compat: Sequence[Compatibility],
    iterations: int,
    *,
    callback: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """Run ``iterations`` parallel mean-field updates; return the final scores (K, P).

    ``unary`` is the (K, P) energy (e.g. ``-log p``). The returned scores are the
    log-beliefs up to a per-point constant: ``softmax(scores, 0)`` is Q.
    ``callback(t, q)`` sees the (P, K) beliefs before update ``t`` and after the last.
    """
    return mean_field_scores(-unary, kernels, compat, iterations, callback=callback)


def mean_field_scores(
    prior: Tensor,
    kernels: KernelOperator,
    compat: Sequence[Compatibility],
    iterations: int,
    *,
    callback: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """:func:`mean_field` given ``prior = -unary`` (K, P), e.g. logits: any per-point
    offset of the prior leaves the result unchanged."""
    if len(compat) != kernels.num_kernels:
        raise ValueError(f"{kernels.num_kernels} kernels but {len(compat)} compatibilities")
    weights = potts_weights(compat)
    tracked = prior.requires_grad or any(isinstance(c, Tensor) and c.requires_grad for c in compat)
    if weights is not None and not (tracked and torch.is_grad_enabled()):
        return _potts_in_buffers(prior, kernels, weights, iterations, callback)
    scores = prior
    for t in range(iterations):
        q = _softmax_kp(scores)
        if callback is not None:
            callback(t, q)
        if weights is not None:
            scores = torch.add(prior, kernels.apply(q, weights).t())
        else:
            scores = torch.sub(prior, _pairwise(kernels, q, compat).t())
    if callback is not None:
        callback(iterations, _softmax_kp(scores))
    return scores


def _potts_in_buffers(
    prior: Tensor,
    kernels: KernelOperator,
    weights: list[float],
    iterations: int,
    callback: Callable[[int, Tensor], None] | None,
) -> Tensor:
    """The Potts loop without autograd, reusing its (K, P) and (P, K) buffers: on CPU,
    fresh image-sized tensors every iteration cost page faults as much as the maths."""
    if iterations == 0:
        if callback is not None:
            callback(0, _softmax_kp(prior))
        return prior
    q = torch.empty(prior.shape[1], prior.shape[0], dtype=prior.dtype, device=prior.device)
    scores = torch.empty_like(prior)
    current = prior
    for t in range(iterations + 1):
        if t == iterations and callback is None:
            break
        torch.softmax(current, 0, out=q.t())  # written straight into the (P, K) layout
        if callback is not None:
            callback(t, q)
        if t < iterations:
            torch.add(prior, kernels.apply(q, weights).t(), out=scores)
            current = scores
    return scores


def free_energy(unary: Tensor, q: Tensor, kernels: KernelOperator, compat: Sequence[Compatibility]) -> Tensor:
    """Mean-field objective ``F(Q) = <Q, U> + 1/2 sum_m <Q, (k_m Q) mu_m> + <Q, log Q>``.

    ``unary`` is (K, P), ``q`` is (P, K). ``F`` is KL(Q || P) up to the log partition
    function. The parallel update above is the concave-convex procedure for ``F``
    when every ``k_m`` is symmetric positive semidefinite and every ``mu_m`` is
    negative semidefinite (Potts with ``w > 0``), so then ``F`` never increases
    (Krähenbühl & Koltun 2013, "Parameter learning and convergent inference for
    dense random fields").
    """
    expected_unary = (q * unary.t()).sum()
    pair = 0.5 * (q * _pairwise(kernels, q, compat)).sum()
    entropy_term = torch.special.xlogy(q, q).sum()
    return expected_unary + pair + entropy_term
