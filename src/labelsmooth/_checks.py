"""Argument and content checks shared by every entry point, one helper per concern.

Checks of *arguments* (types, shapes, names) always run and raise a ``ValueError`` that names the
argument, what was expected and what came. Checks of tensor *contents* (target range, sums of
priors, per-sample eps) are gathered by :class:`ContentChecks` and resolved with a single host
synchronisation, so they can be switched off (``validate_args=False``) for speed and for
``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import math
from numbers import Integral
from typing import Callable

import torch
from torch import Tensor

__all__ = [
    "REDUCTIONS",
    "SUM_TOLERANCE",
    "ContentChecks",
    "check_class_index_target",
    "check_class_index_tensor",
    "check_class_indices",
    "check_class_weight",
    "check_broadcasts_to",
    "check_distribution_tensor",
    "check_floating_dtype",
    "check_ignore_index",
    "check_index_target",
    "check_label_smoothing",
    "check_logit_options",
    "check_logits",
    "check_mean_denominator",
    "check_num_classes",
    "check_probabilities",
    "check_reduction",
    "check_soft_target",
    "first_offender",
    "sum_tolerance",
]

REDUCTIONS = ("none", "mean", "sum")
# Tolerance for "sums to 1" of user-supplied probabilities, relative to their dtype's precision.
SUM_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 2e-2, torch.float32: 1e-4, torch.float64: 1e-8}


def sum_tolerance(dtype: torch.dtype, num_classes: int) -> float:
    """How far a sum of ``num_classes`` probabilities stored in ``dtype`` may be from 1.

    ``SUM_TOLERANCE`` of the dtype the values were *given* in (pass it before any cast to fp32),
    growing linearly beyond 100 classes (rounding errors of a sum add up): the rule of the
    calibration metrics, whose probabilities may come out of any post-processing.

    >>> sum_tolerance(torch.float16, 10), sum_tolerance(torch.float32, 1000)
    (0.01, 0.001)
    """
    return SUM_TOLERANCE.get(dtype, SUM_TOLERANCE[torch.float32]) * max(1.0, num_classes / 100)


# 1. Content checks: collected as tensors, resolved with one host sync --------------------------


class ContentChecks:
    """Collects checks of tensor contents and raises the first failure with one host sync.

    Each check is a 0-dim boolean tensor that is True when the contents are valid, plus a message
    built from 0-dim "evidence" tensors (for example the offending minimum), which are fetched
    together with the flags.

    Example:
        >>> checks = ContentChecks()
        >>> x = torch.tensor([0.5, -2.0])
        >>> checks.add((x >= 0).all(), lambda v: f"x must be non-negative, got {v}", x.min())
        >>> checks.raise_if_failed()
        Traceback (most recent call last):
        ValueError: x must be non-negative, got -2.0
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
    # index_select with a device index: indexing with a 0-dim tensor would read it on the host
    first = bad.reshape(-1).to(torch.int64).argmax().reshape(1)
    return values.reshape(-1).index_select(0, first).reshape(())


# 2. Logits and options ---------------------------------------------------------------------------


def check_logits(input: Tensor, name: str = "input") -> None:
    """``input`` must be a floating tensor with a class dimension."""
    if not isinstance(input, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of logits, got {type(input).__name__}")
    if not input.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor of logits, got dtype {input.dtype}")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_logit_options(softcap: float | None, z_loss: float) -> None:
    """``softcap``: a finite positive float or None; ``z_loss``: a finite float >= 0."""
    if softcap is not None and not (_is_real(softcap) and 0 < softcap < math.inf):
        raise ValueError(f"softcap must be a positive float or None, and finite, got {softcap!r}")
    if not _is_real(z_loss):
        raise ValueError(f"z_loss must be a float, got {type(z_loss).__name__}")
    if not 0 <= z_loss < math.inf:
        raise ValueError(f"z_loss must be a finite float >= 0 (the weight of lse**2), got {z_loss!r}")


def check_ignore_index(ignore_index: int) -> None:
    """``ignore_index``: an int (as in torch, where it cannot be None; -100 ignores nothing valid)."""
    if not isinstance(ignore_index, Integral) or isinstance(ignore_index, bool):
        raise ValueError(f"ignore_index must be an int (the default -100 matches no class), got "
                         f"{ignore_index!r}")


def check_broadcasts_to(tensor: Tensor | None, shape: torch.Size, name: str, of: str) -> None:
    """``tensor`` (when given) must be a tensor that broadcasts to ``shape`` (the shape of ``of``)."""
    if tensor is None:
        return
    if not isinstance(tensor, Tensor):
        raise ValueError(f"{name} must be a tensor that broadcasts to {of}'s shape {tuple(shape)}, "
                         f"got {type(tensor).__name__}")
    try:
        broadcast = torch.broadcast_shapes(tensor.shape, shape)
    except RuntimeError:
        broadcast = None
    if broadcast != shape:
        raise ValueError(f"{name} must broadcast to {of}'s shape {tuple(shape)}, got shape {tuple(tensor.shape)}")


def check_num_classes(num_classes: int) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")


def check_floating_dtype(dtype: torch.dtype) -> None:
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")


# 3. Smoothing: eps, class weights, distributions -------------------------------------------------


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


def check_distribution_tensor(dist: Tensor, num_classes: int, checks: ContentChecks | None,
                              name: str = "distribution") -> None:
    """A (K,) prior or a (K, K) class-conditional table of finite, non-negative rows summing to 1."""
    if not dist.is_floating_point():
        raise ValueError(f"{name} as a tensor must be floating, got dtype {dist.dtype}")
    if dist.shape not in ((num_classes,), (num_classes, num_classes)):
        raise ValueError(f"{name} as a tensor must have shape ({num_classes},) (a prior) or "
                         f"({num_classes}, {num_classes}) (class-conditional), got shape {tuple(dist.shape)}")
    if checks is None:
        return
    d = dist.detach()
    tol = SUM_TOLERANCE.get(d.dtype, SUM_TOLERANCE[torch.float32])
    probability = torch.isfinite(d) & (d >= 0)
    checks.add(probability.all(),
               lambda v: f"{name} must hold finite, non-negative probabilities, got {v:.6g}",
               first_offender(d, ~probability))
    sums = d.sum(-1)
    err = (sums - 1).abs().max()
    what = f"each row of {name}" if d.dim() == 2 else name
    checks.add(err <= tol, lambda v: f"{what} must sum to 1 (within {tol:g}), off by {v:.3g}", err)


# 4. Targets --------------------------------------------------------------------------------------


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


def check_probabilities(values: Tensor, name: str, checks: ContentChecks | None, *,
                        sum_dim: int | None = None) -> None:
    """``values`` must be finite probabilities in [0, 1]; with ``sum_dim``, summing to 1 along it
    (within ``SUM_TOLERANCE`` of ``values``' own dtype, as distributions)."""
    if checks is None or values.numel() == 0:
        return
    v = values.detach()
    probability = torch.isfinite(v) & (v >= 0) & (v <= 1)
    checks.add(probability.all(), lambda x: f"{name} must hold probabilities, finite and in [0, 1], got {x:.6g}",
               first_offender(v, ~probability))
    if sum_dim is None:
        return
    tolerance = SUM_TOLERANCE.get(v.dtype, SUM_TOLERANCE[torch.float32])
    off = (v.sum(sum_dim, dtype=torch.float64 if v.dtype == torch.float64 else torch.float32) - 1).abs().max()
    checks.add(off <= tolerance, lambda x: f"{name} as probabilities must sum to 1 over the class dimension "
                                           f"{sum_dim} (within {tolerance:g}), off by {x:.3g}", off)


def check_mean_denominator(denominator: Tensor, valid: Tensor, checks: ContentChecks | None, *,
                           reduction: str, name: str = "weight") -> None:
    """``reduction="mean"`` divides by the class weights ``w_y`` summed over the non-ignored targets:
    that sum must be positive when there is any such target (with none, the loss is 0)."""
    if checks is None or reduction != "mean":
        return
    checks.add((denominator > 0) | ~valid.any(),
               lambda total, count: f"{name} must give the non-ignored targets a positive total for "
                                    f"reduction='mean' (the mean divides by it), got {total:.6g} over "
                                    f"{int(count)} targets; use reduction='sum' to sum weighted losses "
                                    f"without dividing", denominator, valid.sum())


def check_class_index_tensor(target: Tensor) -> None:
    """``target`` must be an integer tensor (of class indices; any shape)."""
    if not isinstance(target, Tensor) or target.is_floating_point() or target.is_complex() \
            or target.dtype == torch.bool:
        raise ValueError(f"target must be an integer tensor of class indices, got "
                         f"{target.dtype if isinstance(target, Tensor) else type(target).__name__}")


def check_class_index_target(input: Tensor, target: Tensor) -> None:
    """ValueError unless ``target`` holds class indices shaped like ``input`` (N, K, d1, ...) without K."""
    expected = input.shape[:1] + input.shape[2:]
    if target.shape != expected:
        raise ValueError(f"target must have shape {tuple(expected)} (input {tuple(input.shape)} "
                         f"without its class dimension) or be probabilities of shape "
                         f"{tuple(input.shape)}, got shape {tuple(target.shape)}")
    if target.dtype == torch.bool or target.is_complex():
        raise ValueError(f"target must hold integer class indices or probabilities, got dtype {target.dtype}")


def check_soft_target(input: Tensor, target: Tensor, ignore_index: int = -100) -> None:
    """Probability targets must have the shape of ``input``; ``ignore_index`` does not apply to them
    (torch refuses a non-negative one; a negative one, such as the default, matches nothing)."""
    if target.shape != input.shape:
        raise ValueError(f"target as probabilities must have the shape of input {tuple(input.shape)}, "
                         f"got shape {tuple(target.shape)}")
    check_ignore_index(ignore_index)
    if ignore_index >= 0:
        raise ValueError(f"ignore_index is not supported with probability targets (as in torch): rows "
                         f"cannot be ignored by class, got ignore_index={ignore_index}; leave it at -100 and "
                         f"pass class indices to ignore rows")


def check_index_target(target: Tensor, expected_shape: torch.Size, *, shape_source: str,
                       unsupported_by: str) -> None:
    """``target``: a tensor of integer class indices of ``expected_shape``, for entry points that
    take no probability targets.

    ``shape_source`` says where the expected shape comes from (``"hidden (4, 8) without its last
    dimension"``); ``unsupported_by`` who refuses probability targets (``"by the vocab-parallel loss"``).
    """
    if not isinstance(target, Tensor):
        raise ValueError(f"target must be a tensor of class indices, got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices (probability targets are not "
                         f"supported {unsupported_by}), got dtype {target.dtype}")
    if target.shape != expected_shape:
        raise ValueError(f"target must have shape {tuple(expected_shape)} ({shape_source}), "
                         f"got shape {tuple(target.shape)}")
