"""Smoothing distributions and ``smooth_targets``: what a smoothed target is.

A smoothed target mixes the one-hot label with a distribution ``u`` over the K classes::

    q'(k | x) = (1 - eps) * [k == y] + eps * u(k | y)

``u`` is named by ``distribution``:

- ``"uniform"``: ``u(k) = 1 / K`` (PyTorch, Keras, timm, Szegedy et al. 2016);
- ``"non_target"``: ``u(k | y) = [k != y] / (K - 1)``, so the true class keeps exactly ``1 - eps``
  (fairseq, Megatron);
- a 1-D tensor of K probabilities: a prior ``u(k)`` (for example the class frequencies);
- a (K, K) tensor: class-conditional, row ``y`` is ``u(. | y)`` (online label smoothing).

:func:`resolve_smoothing` turns a ``distribution`` (and class weights) into the :class:`Smoothing`
that every loss uses; its checks live in :mod:`labelsmooth._checks`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import torch
from torch import Tensor

from ._checks import (
    ContentChecks,
    check_class_index_tensor,
    check_class_indices,
    check_distribution_tensor,
    check_floating_dtype,
    check_label_smoothing,
    check_num_classes,
)

__all__ = [
    "DISTRIBUTIONS",
    "Distribution",
    "Smoothing",
    "named_distribution",
    "resolve_smoothing",
    "smooth_targets",
]

Distribution = Union[str, Tensor]


# 1. Distributions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Smoothing:
    """The smoothing distribution, resolved against K and the class weights.

    ``vector`` (K,) holds ``w_c * u(c)`` for distributions shared by every row; ``matrix`` (K, K)
    holds ``w_c * u(c | y)`` in row ``y`` for class-conditional ones. ``non_target`` marks the
    ``[c != y] / (K - 1)`` form, stored as the vector ``w / (K - 1)`` plus a correction on the
    target class that the loss applies (``- w_y * nll / (K - 1)`` in the smoothing term).
    ``constant`` is the one value of every entry of ``vector`` when they are all equal and known
    on the host (``"uniform"`` and ``"non_target"`` without class weights), so that kernels can
    use it without reading the vector; None otherwise.
    """

    vector: Tensor | None
    matrix: Tensor | None
    non_target: bool
    num_classes: int
    constant: float | None = None

    def row_mass(self, target: Tensor) -> Tensor | float:
        """``sum_c w_c u(c | y)`` per row (before the non-target correction)."""
        if self.matrix is not None:
            return self.matrix.sum(1)[target]
        return self.vector.sum()


def _uniform(num_classes: int) -> tuple[float, bool]:
    return 1.0 / num_classes, False


def _non_target(num_classes: int) -> tuple[float, bool]:
    if num_classes < 2:
        raise ValueError(f"distribution='non_target' needs at least 2 classes, got num_classes={num_classes}")
    return 1.0 / (num_classes - 1), True


# name -> (value of every entry of u, whether the target class is left out) for K classes.
DISTRIBUTIONS: dict[str, Callable[[int], tuple[float, bool]]] = {
    "uniform": _uniform,
    "non_target": _non_target,
}


def named_distribution(distribution: str, num_classes: int) -> tuple[float, bool]:
    """(the value of every entry of u, whether the target class is left out) of a distribution
    named by a string, for K classes; ValueError for an unknown name.

    >>> named_distribution("non_target", 5)
    (0.25, True)
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {sorted(DISTRIBUTIONS)}, a ({num_classes},) "
                         f"prior or a ({num_classes}, {num_classes}) tensor, got {distribution!r}")
    return DISTRIBUTIONS[distribution](num_classes)


def resolve_smoothing(distribution: Distribution, num_classes: int, weight: Tensor | None,
                      dtype: torch.dtype, device: torch.device,
                      checks: ContentChecks | None) -> Smoothing:
    """Turn ``distribution`` and class ``weight`` into the :class:`Smoothing` the losses use."""
    if isinstance(distribution, str):
        constant, non_target = named_distribution(distribution, num_classes)
        vector, matrix = torch.full((num_classes,), constant, dtype=dtype, device=device), None
    elif isinstance(distribution, Tensor):
        check_distribution_tensor(distribution, num_classes, checks)
        dist = distribution.to(device=device, dtype=dtype)
        vector, matrix = (dist, None) if dist.dim() == 1 else (None, dist)
        constant, non_target = None, False
    else:
        raise ValueError(f"distribution must be a string or a tensor, got {type(distribution).__name__}")
    if weight is not None:
        w = weight.to(device=device, dtype=dtype)
        vector = None if vector is None else vector * w
        matrix = None if matrix is None else matrix * w
        constant = None
    return Smoothing(vector, matrix, non_target, num_classes, constant)


# 2. smooth_targets --------------------------------------------------------------------------------


def smooth_targets(target: Tensor, num_classes: int, label_smoothing: float | Tensor, *,
                   distribution: Distribution = "uniform", ignore_index: int | None = None,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    r"""Smoothed target distribution ``q' = (1 - eps) * onehot(y) + eps * u(. | y)``.

    Args:
        target: class indices, shape (N,) or (N, d1, ...).
        num_classes: K.
        label_smoothing: eps, a float or a tensor with the shape of ``target`` (per sample).
        distribution: ``"uniform"``, ``"non_target"``, a (K,) prior or a (K, K) tensor.
        ignore_index: rows whose target equals it get all-zero targets.
        dtype: floating dtype of the result.

    Returns:
        Probabilities with the class dimension at position 1, shape (N, K) or (N, K, d1, ...),
        the layout that :func:`torch.nn.functional.cross_entropy` takes as soft targets.

    Example (K = 4, eps = 0.001, label 1: 1 - eps + eps/K = 0.99925 on the label, eps/K elsewhere):
        >>> import torch, labelsmooth
        >>> labelsmooth.smooth_targets(torch.tensor([1]), 4, 0.001, dtype=torch.float64)
        tensor([[2.5000e-04, 9.9925e-01, 2.5000e-04, 2.5000e-04]], dtype=torch.float64)
    """
    check_class_index_tensor(target)
    check_num_classes(num_classes)
    check_floating_dtype(dtype)
    checks = ContentChecks()
    eps = check_label_smoothing(label_smoothing, target.shape, checks)
    check_class_indices(target, num_classes, ignore_index, checks)
    smoothing = resolve_smoothing(distribution, num_classes, None, dtype, target.device, checks)
    checks.raise_if_failed()

    valid = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    y = torch.where(valid, target, torch.zeros_like(target)).long()
    onehot = torch.nn.functional.one_hot(y, num_classes).to(dtype)
    if smoothing.matrix is not None:
        u = smoothing.matrix[y]
    elif smoothing.non_target:
        u = (1.0 - onehot) * smoothing.vector
    else:
        u = smoothing.vector.expand_as(onehot)
    eps_t = eps.to(dtype).unsqueeze(-1) if isinstance(eps, Tensor) else eps
    q = (1 - eps_t) * onehot + eps_t * u
    q = q * valid.unsqueeze(-1).to(dtype)
    return q.movedim(-1, 1) if q.dim() > 1 else q
