"""Smoothing distributions, ``smooth_targets`` and the argument checks every entry point shares.

A smoothed target mixes the one-hot label with a distribution ``u`` over the K classes::

    q'(k | x) = (1 - eps) * [k == y] + eps * u(k | y)

``u`` is named by ``distribution``:

- ``"uniform"``: ``u(k) = 1 / K`` (PyTorch, Keras, timm, Szegedy et al. 2016);
- ``"non_target"``: ``u(k | y) = [k != y] / (K - 1)``, so the true class keeps exactly ``1 - eps``
  (fairseq, Megatron);
- a 1-D tensor of K probabilities: a prior ``u(k)`` (for example the class frequencies);
- a (K, K) tensor: class-conditional, row ``y`` is ``u(. | y)`` (online label smoothing).

Checks of *arguments* (types, shapes, names) always run. Checks of tensor *contents* (target
range, sums of priors, per-sample eps) are gathered by :class:`ContentChecks` and resolved with a
single host synchronisation, so they can be switched off (``validate_args=False``) for speed and
for ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Union

import torch
from torch import Tensor

__all__ = [
    "DISTRIBUTIONS",
    "ContentChecks",
    "Smoothing",
    "check_label_smoothing",
    "check_logits",
    "check_reduction",
    "resolve_smoothing",
    "smooth_targets",
]

Distribution = Union[str, Tensor]
REDUCTIONS = ("none", "mean", "sum")
# Tolerance for "sums to 1" of a user-supplied prior, relative to its dtype's precision.
_SUM_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 2e-2, torch.float32: 1e-4, torch.float64: 1e-8}


# 1. Content checks: collected as tensors, resolved with one host sync --------------------------


class ContentChecks:
    """Collects checks of tensor contents and raises the first failure with one host sync.

    Each check is a 0-dim boolean tensor that is True when the contents are valid, plus a message
    built from 0-dim "evidence" tensors (for example the offending minimum), which are fetched
    together with the flags.
    """

    def __init__(self) -> None:
        self._flags: list[Tensor] = []
        self._evidence: list[Tensor] = []
        self._messages: list[Callable[..., str]] = []

    def add(self, ok: Tensor, message: Callable[..., str], *evidence: Tensor) -> None:
        self._flags.append(ok.reshape(()))
        self._evidence.append(torch.stack([e.detach().reshape(()).double() for e in evidence])
                              if evidence else ok.new_zeros(0, dtype=torch.float64))
        self._messages.append(message)

    def raise_if_failed(self) -> None:
        if not self._flags:
            return
        flags = torch.stack([f.to(torch.bool) for f in self._flags])
        evidence = torch.cat([e.to(flags.device) for e in self._evidence])
        # One transfer: every flag and every evidence value come back together.
        values = torch.cat([flags.double(), evidence]).tolist()
        flag_values, rest = values[: len(self._flags)], values[len(self._flags):]
        for ok, message, ev in zip(flag_values, self._messages, self._evidence):
            n = ev.numel()
            args, rest = rest[:n], rest[n:]
            if not ok:
                raise ValueError(message(*args))


def first_offender(values: Tensor, bad: Tensor) -> Tensor:
    """The first element of ``values`` where ``bad`` is True, as 0-dim evidence for a message.

    Any element (or 0 for an empty tensor) when nothing is bad; the flag decides whether it is shown.
    """
    if values.numel() == 0:
        return values.new_zeros(())
    return values.reshape(-1)[bad.reshape(-1).to(torch.int64).argmax()]


# 2. Argument checks, one helper per concern ------------------------------------------------------


def check_logits(input: Tensor, name: str = "input") -> None:
    """``input`` must be a floating tensor with a class dimension."""
    if not isinstance(input, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of logits, got {type(input).__name__}")
    if not input.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor of logits, got dtype {input.dtype}")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_logit_options(softcap: float | None, z_loss: float) -> None:
    """``softcap``: a positive float or None; ``z_loss``: a float."""
    if softcap is not None and not (isinstance(softcap, (int, float)) and softcap > 0):
        raise ValueError(f"softcap must be a positive float or None, got {softcap!r}")
    if not isinstance(z_loss, (int, float)):
        raise ValueError(f"z_loss must be a float, got {type(z_loss).__name__}")


def check_label_smoothing(label_smoothing: float | Tensor, shape: torch.Size,
                          checks: ContentChecks | None) -> float | Tensor:
    """``label_smoothing``: a finite float at most 1, or a tensor of such values, one per sample.

    ``shape`` is the shape of one value per sample (the target's shape for class indices). A
    tensor of that shape, a 0-dim tensor, or a float is accepted. Negative values are negative
    label smoothing and are kept as written.
    """
    if isinstance(label_smoothing, Tensor):
        if not label_smoothing.is_floating_point():
            raise ValueError(f"label_smoothing must be a floating tensor, got dtype {label_smoothing.dtype}")
        if label_smoothing.dim() != 0 and label_smoothing.shape != shape:
            raise ValueError(f"label_smoothing as a tensor must be 0-dim or have one value per sample, "
                             f"shape {tuple(shape)}; got shape {tuple(label_smoothing.shape)}")
        if checks is not None:
            eps = label_smoothing.detach()
            bad = ~(torch.isfinite(eps) & (eps <= 1))
            checks.add(~bad.any(), lambda v: f"label_smoothing must be finite and at most 1 for every "
                                             f"sample, got {v:.6g}", first_offender(eps, bad))
        return label_smoothing
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)):
        raise ValueError(f"label_smoothing must be a float or a tensor, got {type(label_smoothing).__name__}")
    eps = float(label_smoothing)
    if not math.isfinite(eps) or eps > 1.0:
        raise ValueError(f"label_smoothing must be finite and at most 1, got {label_smoothing}")
    return eps


def check_class_weight(weight: Tensor | None, num_classes: int, name: str = "weight") -> None:
    if weight is None:
        return
    if not isinstance(weight, Tensor) or not weight.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor of {num_classes} class weights, got "
                         f"{weight.dtype if isinstance(weight, Tensor) else type(weight).__name__}")
    if weight.shape != (num_classes,):
        raise ValueError(f"{name} must have shape ({num_classes},), one weight per class, "
                         f"got shape {tuple(weight.shape)}")


def check_class_indices(target: Tensor, num_classes: int, ignore_index: int | None,
                        checks: ContentChecks | None, name: str = "target") -> None:
    """Class-index targets must lie in [0, num_classes) or equal ``ignore_index``.

    The test is vectorised (no device-side assert on CUDA); it is resolved with the other
    content checks.
    """
    if checks is None or target.numel() == 0:
        return
    valid = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        valid |= target == ignore_index
    allowed = f"in [0, {num_classes})" + (f" or equal to ignore_index={ignore_index}"
                                          if ignore_index is not None else "")
    checks.add(valid.all(), lambda v: f"{name} must hold class indices {allowed}, got {int(v)}",
               first_offender(target, ~valid))


# 3. Distributions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Smoothing:
    """The smoothing distribution, resolved against K and the class weights.

    ``vector`` (K,) holds ``w_c * u(c)`` for distributions shared by every row; ``matrix`` (K, K)
    holds ``w_c * u(c | y)`` in row ``y`` for class-conditional ones. ``non_target`` marks the
    ``[c != y] / (K - 1)`` form, stored as the vector ``w / (K - 1)`` plus a correction on the
    target class that the loss applies (``- w_y * nll / (K - 1)`` in the smoothing term).
    """

    vector: Tensor | None
    matrix: Tensor | None
    non_target: bool
    num_classes: int

    def row_mass(self, target: Tensor) -> Tensor | float:
        """``sum_c w_c u(c | y)`` per row (before the non-target correction)."""
        if self.matrix is not None:
            return self.matrix.sum(1)[target]
        return self.vector.sum()


def _uniform(num_classes: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, None, bool]:
    return torch.full((num_classes,), 1.0 / num_classes, dtype=dtype, device=device), None, False


def _non_target(num_classes: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, None, bool]:
    if num_classes < 2:
        raise ValueError(f"distribution='non_target' needs at least 2 classes, got num_classes={num_classes}")
    return torch.full((num_classes,), 1.0 / (num_classes - 1), dtype=dtype, device=device), None, True


DISTRIBUTIONS: dict[str, Callable[[int, torch.dtype, torch.device], tuple]] = {
    "uniform": _uniform,
    "non_target": _non_target,
}


def _check_distribution_tensor(dist: Tensor, num_classes: int, checks: ContentChecks | None) -> None:
    if not dist.is_floating_point():
        raise ValueError(f"distribution as a tensor must be floating, got dtype {dist.dtype}")
    if dist.shape not in ((num_classes,), (num_classes, num_classes)):
        raise ValueError(f"distribution as a tensor must have shape ({num_classes},) (a prior) or "
                         f"({num_classes}, {num_classes}) (class-conditional), got shape {tuple(dist.shape)}")
    if checks is None:
        return
    d = dist.detach()
    tol = _SUM_TOLERANCE.get(d.dtype, 1e-4)
    probability = torch.isfinite(d) & (d >= 0)
    checks.add(probability.all(),
               lambda v: f"distribution must hold finite, non-negative probabilities, got {v:.6g}",
               first_offender(d, ~probability))
    sums = d.sum(-1)
    err = (sums - 1).abs().max()
    what = "each row of distribution" if d.dim() == 2 else "distribution"
    checks.add(err <= tol, lambda v: f"{what} must sum to 1 (within {tol:g}), off by {v:.3g}", err)


def resolve_smoothing(distribution: Distribution, num_classes: int, weight: Tensor | None,
                      dtype: torch.dtype, device: torch.device,
                      checks: ContentChecks | None) -> Smoothing:
    """Turn ``distribution`` and class ``weight`` into the :class:`Smoothing` the losses use."""
    if isinstance(distribution, str):
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {sorted(DISTRIBUTIONS)}, a ({num_classes},) "
                             f"prior or a ({num_classes}, {num_classes}) tensor, got {distribution!r}")
        vector, matrix, non_target = DISTRIBUTIONS[distribution](num_classes, dtype, device)
    elif isinstance(distribution, Tensor):
        _check_distribution_tensor(distribution, num_classes, checks)
        dist = distribution.to(device=device, dtype=dtype)
        vector, matrix = (dist, None) if dist.dim() == 1 else (None, dist)
        non_target = False
    else:
        raise ValueError(f"distribution must be a string or a tensor, got {type(distribution).__name__}")
    if weight is not None:
        w = weight.to(device=device, dtype=dtype)
        vector = None if vector is None else vector * w
        matrix = None if matrix is None else matrix * w
    return Smoothing(vector, matrix, non_target, num_classes)


# 4. smooth_targets --------------------------------------------------------------------------------


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

    Example (seed 001's worked example: K = 4, eps = 0.001, label 1):
        >>> import torch, labelsmooth
        >>> labelsmooth.smooth_targets(torch.tensor([1]), 4, 0.001, dtype=torch.float64)
        tensor([[2.5000e-04, 9.9925e-01, 2.5000e-04, 2.5000e-04]], dtype=torch.float64)
    """
    if not isinstance(target, Tensor) or target.is_floating_point() or target.is_complex() \
            or target.dtype == torch.bool:
        raise ValueError(f"target must be an integer tensor of class indices, got "
                         f"{target.dtype if isinstance(target, Tensor) else type(target).__name__}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
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
