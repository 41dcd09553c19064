"""Label-smoothed losses: the public functions and the ``nn.Module`` wrappers that hold their arguments.

Per row, with smoothed target ``q' = (1 - eps) onehot(y) + eps u(. | y)`` and class weights w::

    loss = (1 - eps) w_y (-log p_y) + eps sum_c w_c u(c | y) (-log p_c) + z_loss lse^2

The functions here check their arguments and pick an implementation (``impl``: a row-statistics
provider); the math is the engine's (:mod:`labelsmooth.engine`), shared with the Triton kernels,
the fused linear loss and the vocab-parallel loss.
"""

from __future__ import annotations

import importlib.util
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import (
    ContentChecks,
    check_broadcasts_to,
    check_class_index_target,
    check_class_weight,
    check_label_smoothing,
    check_logit_options,
    check_logits,
    check_probabilities,
    check_reduction,
    check_soft_target,
)
from .engine import (
    LossParts,
    accumulation_dtype,
    check_class_index_call,
    class_target_loss,
    direct_loss_and_gradient,
    loss_and_gradient,
    prepare_class_targets,
    soft_target_loss,
    to_rows,
    torch_row_statistics,
)
from .targets import Distribution

__all__ = [
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "LossParts",
    "ROW_STATISTICS",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "cross_entropy_with_grad",
]


# 1. Implementations: which row-statistics provider runs -------------------------------------------


def _triton_row_statistics() -> Callable:
    # Imported on first use, which keeps Triton out of `import labelsmooth`.
    from .ops.cross_entropy import row_statistics

    return row_statistics


# impl name -> loader of its row-statistics provider (see labelsmooth.engine for the contract).
ROW_STATISTICS: dict[str, Callable[[], Callable]] = {
    "torch": lambda: torch_row_statistics,
    "triton": _triton_row_statistics,
}


def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve_impl(impl: str, input: Tensor) -> Callable:
    if impl == "auto":
        impl = "triton" if input.is_cuda and _triton_available() else "torch"
    if impl not in ROW_STATISTICS:
        raise ValueError(f"impl must be 'auto' or one of {sorted(ROW_STATISTICS)}, got {impl!r}")
    if impl == "triton" and not _triton_available():
        raise ValueError("impl='triton' needs the triton package (pip install 'labelsmooth[gpu]')")
    return ROW_STATISTICS[impl]()


# 2. Multi-class cross-entropy ---------------------------------------------------------------------


def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float | Tensor = 0.0, *,
                  distribution: Distribution = "uniform", z_loss: float = 0.0,
                  softcap: float | None = None, return_parts: bool = False,
                  inplace_backward: bool = False, validate_args: bool = True,
                  impl: str = "auto") -> Tensor | LossParts:
    r"""Label-smoothed cross-entropy, a drop-in for :func:`torch.nn.functional.cross_entropy`.

    Per row, with smoothed target ``q' = (1 - eps) onehot(y) + eps u(. | y)`` and class weights w::

        loss = (1 - eps) w_y (-log p_y) + eps sum_c w_c u(c | y) (-log p_c) + z_loss lse^2

    With ``distribution="uniform"`` this equals ``F.cross_entropy(..., label_smoothing=eps)`` for
    every weight, ignore_index, reduction and shape, except that a batch whose targets are all
    ignored gives 0 (and zero gradients) rather than NaN; the other deliberate differences from
    torch are listed in the manual's conventions page.

    Args:
        input: logits, (N, K), (N, K, d1, ...) or (K,).
        target: class indices (N,) / (N, d1, ...) / (), or probabilities with ``input``'s shape
            (each row in [0, 1], summing to 1 over the class dimension).
        weight: (K,) class weights, as in torch.
        ignore_index: an int; targets equal to it contribute nothing to either term nor to the
            mean. Not with probability targets (a non-negative value raises, as in torch).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``; mean divides by the summed ``w_y`` of
            non-ignored rows (by the row count for probability targets); that sum must be
            positive (``validate_args`` raises otherwise; without it, it is divided by as written).
        label_smoothing: eps, a float at most 1 or a per-sample tensor with the target's shape;
            negative values are negative label smoothing, computed as written.
        distribution: ``"uniform"`` (eps/K), ``"non_target"`` (eps/(K-1) off the target), a (K,)
            prior, or a (K, K) class-conditional tensor (row y is ``u(. | y)``).
        z_loss: adds ``z_loss * lse**2`` per row; finite, >= 0.
        softcap: applies ``softcap * tanh(x / softcap)`` to the logits first (in fp32 for
            half-precision logits); finite, > 0.
        return_parts: return ``LossParts(loss, nll, smooth)``, all reduced the same way, with the
            z-loss term (``.z_loss``) and the arg-max accuracy of the non-ignored rows
            (``.accuracy``, from the same pass on the torch path) as attributes.
        inplace_backward: let backward write the gradient into the logits' storage (the caller's
            logits are overwritten). Saves one (N, K) buffer when the logits come from a layer;
            for a leaf tensor autograd copies the gradient into ``.grad`` anyway.
        validate_args: check tensor contents (target range, probability targets, priors, eps, the
            mean's denominator) with one host sync.
        impl: ``"auto"`` (Triton on CUDA when installed), ``"torch"`` or ``"triton"``.

    Example:
        >>> import torch, labelsmooth
        >>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
        >>> target = torch.tensor([0, 2])
        >>> labelsmooth.cross_entropy(logits, target, label_smoothing=0.1)
        tensor(0.9547)
        >>> torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.1)
        tensor(0.9547)
    """
    check_logits(input)
    check_reduction(reduction)
    if not isinstance(target, Tensor):
        raise ValueError(f"target must be a tensor, got {type(target).__name__}")
    if input.dim() == 1:  # (K,) logits with a 0-dim target, as torch allows
        if target.shape not in (torch.Size(), input.shape):
            raise ValueError(f"target for logits of shape {tuple(input.shape)} must be a 0-dim class index "
                             f"or probabilities of shape {tuple(input.shape)}, got shape {tuple(target.shape)}")
        eps = label_smoothing
        if isinstance(eps, Tensor) and eps.dim() == 0 and not target.is_floating_point():
            eps = eps.unsqueeze(0)
        parts = cross_entropy(input.unsqueeze(0), target.unsqueeze(0), weight, ignore_index, reduction,
                              eps, distribution=distribution, z_loss=z_loss, softcap=softcap,
                              return_parts=True, inplace_backward=inplace_backward,
                              validate_args=validate_args, impl=impl)
        if reduction == "none":
            parts = LossParts(*(None if p is None else p.squeeze(0)
                                for p in (*parts, parts.z_loss, parts.accuracy)))
        return parts if return_parts else parts.loss
    if input.dim() == 0:
        raise ValueError("input must have a class dimension, got a 0-dim tensor")
    num_classes = input.shape[1]
    check_class_weight(weight, num_classes)
    check_logit_options(softcap, z_loss)
    if target.is_floating_point():
        check_soft_target(input, target, ignore_index)
        return soft_target_loss(input, target, weight=weight, label_smoothing=label_smoothing,
                                distribution=distribution, z_loss=z_loss, softcap=softcap, reduction=reduction,
                                return_parts=return_parts, validate_args=validate_args)
    check_class_index_target(input, target)
    targets = prepare_class_targets(target, num_classes, ignore_index=ignore_index,
                                    label_smoothing=label_smoothing, distribution=distribution, weight=weight,
                                    dtype=accumulation_dtype(input.dtype), device=input.device,
                                    validate_args=validate_args, return_parts=return_parts, reduction=reduction)
    provider = resolve_impl(impl, input)
    lse, target_logit, dot, *prediction = provider(to_rows(input, num_classes), targets.target, targets.smoothing,
                                                   softcap, inplace_backward, predictions=return_parts)
    return class_target_loss(lse, target_logit, dot, targets, weight=weight, z_loss=z_loss, reduction=reduction,
                             dtype=input.dtype, return_parts=return_parts,
                             prediction=prediction[0] if prediction else None)


def cross_entropy_with_grad(input: Tensor, target: Tensor, weight: Tensor | None = None, ignore_index: int = -100,
                            reduction: str = "mean", label_smoothing: float | Tensor = 0.0, *,
                            distribution: Distribution = "uniform", z_loss: float = 0.0,
                            softcap: float | None = None, validate_args: bool = True) -> tuple[Tensor, Tensor]:
    r"""The loss of :func:`cross_entropy` and its gradient, together, without autograd.

    Returns ``(loss, grad)`` with ``grad = d loss.sum() / d input`` (for ``reduction="none"``,
    each row's loss differentiated with respect to its own logits), shaped and typed like
    ``input``. For training loops that apply gradients themselves (hand-written backward passes,
    pipeline schedules, many small steps): the loss of :func:`cross_entropy` and the gradient in
    closed form, ``softmax(x) - q`` for the smoothed target ``q``, with no autograd graph to build
    or walk, which is most of the loss's cost on small batches. (N, K) logits with a named
    distribution and no class weights, z-loss or softcap take a path of about twenty operations
    from the log-probabilities; everything else goes through the per-row statistics (log-sum-exp,
    target logit, smoothing term) that every loss of the package shares.

    Args: as :func:`cross_entropy`, with class-index targets and (N, K) or (N, K, d1, ...) logits.

    Example:
        >>> import torch
        >>> from labelsmooth.losses import cross_entropy_with_grad
        >>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
        >>> loss, grad = cross_entropy_with_grad(logits, torch.tensor([0, 2]), label_smoothing=0.1)
        >>> reference = logits.clone().requires_grad_()
        >>> torch.nn.functional.cross_entropy(reference, torch.tensor([0, 2]), label_smoothing=0.1).backward()
        >>> round(loss.item(), 4), torch.allclose(grad, reference.grad)
        (0.9547, True)
    """
    check_class_index_call("cross_entropy_with_grad", input, target, weight, reduction, softcap, z_loss)
    if input.dim() == 2 and weight is None and not z_loss and softcap is None and isinstance(distribution, str):
        return direct_loss_and_gradient(input, target, ignore_index=ignore_index, label_smoothing=label_smoothing,
                                        distribution=distribution, reduction=reduction,
                                        validate_args=validate_args)
    targets = prepare_class_targets(target, input.shape[1], ignore_index=ignore_index,
                                    label_smoothing=label_smoothing, distribution=distribution, weight=weight,
                                    dtype=accumulation_dtype(input.dtype), device=input.device,
                                    validate_args=validate_args, return_parts=False, reduction=reduction)
    return loss_and_gradient(input, targets, weight=weight, z_loss=z_loss, softcap=softcap, reduction=reduction)


# 3. Binary / multi-label --------------------------------------------------------------------------


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor, label_smoothing: float | Tensor = 0.0,
                                     *, weight: Tensor | None = None, pos_weight: Tensor | None = None,
                                     reduction: str = "mean", validate_args: bool = True) -> Tensor:
    r"""Binary / multi-label cross-entropy on logits with smoothed targets ``y (1 - eps) + eps / 2``.

    This is Keras' convention: each binary label is pulled towards 1/2 (a uniform prior over the
    two outcomes of *that* label). The alternative, ``y (1 - eps) + eps / K`` over K labels, treats
    the labels as one categorical distribution, which multi-label targets are not.

    Args:
        input: logits of any shape.
        target: 0/1 (or probability) targets of ``input``'s shape, in [0, 1].
        label_smoothing: eps at most 1, a float or a tensor broadcastable to ``target``.
        weight, pos_weight, reduction: as in :func:`torch.nn.functional.binary_cross_entropy_with_logits`
            (``weight`` broadcasts to ``input``, ``pos_weight`` to ``target``); ``"mean"`` of an
            empty batch is 0, as for :func:`cross_entropy`.
        validate_args: check tensor contents (targets in [0, 1], per-label eps) with one host sync.

    Example:
        >>> import torch, labelsmooth
        >>> x, y = torch.tensor([3.0, -2.0]), torch.tensor([1.0, 0.0])
        >>> labelsmooth.binary_cross_entropy_with_logits(x, y, 0.2)
        tensor(0.3378)
        >>> torch.nn.functional.binary_cross_entropy_with_logits(x, torch.tensor([0.9, 0.1]))
        tensor(0.3378)
    """
    check_logits(input)
    check_reduction(reduction)
    if not isinstance(target, Tensor) or target.shape != input.shape:
        raise ValueError(f"target must be a tensor with the shape of input {tuple(input.shape)}, got "
                         f"{tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__}")
    check_broadcasts_to(weight, input.shape, "weight", "input")
    check_broadcasts_to(pos_weight, target.shape, "pos_weight", "target")
    checks = ContentChecks() if validate_args else None
    check_probabilities(target, "target", checks)
    if isinstance(label_smoothing, Tensor) and label_smoothing.dim():
        try:
            torch.broadcast_shapes(label_smoothing.shape, target.shape)
        except RuntimeError:
            raise ValueError(f"label_smoothing must broadcast to target's shape {tuple(target.shape)}, "
                             f"got shape {tuple(label_smoothing.shape)}") from None
        eps = check_label_smoothing(label_smoothing, label_smoothing.shape, checks)
    else:
        eps = check_label_smoothing(label_smoothing, torch.Size(), checks)
    if checks is not None:
        checks.raise_if_failed()
    smoothed = target.to(input.dtype) * (1 - eps) + eps / 2
    if reduction == "mean" and input.numel() == 0:
        reduction = "sum"  # the mean of nothing: 0 (and zero gradients), not torch's NaN
    return F.binary_cross_entropy_with_logits(input, smoothed, weight=weight, pos_weight=pos_weight,
                                              reduction=reduction)


# 4. Modules: they hold arguments and call the functionals -----------------------------------------


def _register_optional(module: nn.Module, name: str, value) -> None:
    """Tensors become buffers (so ``.to(device)`` moves them); anything else stays an attribute."""
    if isinstance(value, Tensor):
        module.register_buffer(name, value)
    else:
        setattr(module, name, value)


class CrossEntropyLoss(nn.Module):
    """Module form of :func:`cross_entropy`, a drop-in for :class:`torch.nn.CrossEntropyLoss`.

    Example:
        >>> import torch, labelsmooth
        >>> criterion = labelsmooth.CrossEntropyLoss(label_smoothing=0.1, distribution="non_target")
        >>> logits = torch.tensor([[2.0, 0.5, -1.0]])
        >>> criterion(logits, torch.tensor([0]))
        tensor(0.4663)
        >>> -(torch.tensor([0.9, 0.05, 0.05]) * logits.log_softmax(1)).sum()  # q' = (1-eps, eps/2, eps/2)
        tensor(0.4663)
    """

    def __init__(self, weight: Tensor | None = None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0, *, distribution: Distribution = "uniform",
                 z_loss: float = 0.0, softcap: float | None = None, return_parts: bool = False,
                 inplace_backward: bool = False, validate_args: bool = True, impl: str = "auto") -> None:
        super().__init__()
        check_reduction(reduction)
        if not isinstance(label_smoothing, Tensor):
            check_label_smoothing(label_smoothing, torch.Size(), None)
        _register_optional(self, "weight", weight)
        _register_optional(self, "distribution", distribution)
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing
        self.z_loss, self.softcap, self.return_parts = z_loss, softcap, return_parts
        self.inplace_backward, self.validate_args, self.impl = inplace_backward, validate_args, impl

    def forward(self, input: Tensor, target: Tensor) -> Tensor | LossParts:
        return cross_entropy(input, target, self.weight, self.ignore_index, self.reduction,
                             self.label_smoothing, distribution=self.distribution, z_loss=self.z_loss,
                             softcap=self.softcap, return_parts=self.return_parts,
                             inplace_backward=self.inplace_backward,
                             validate_args=self.validate_args, impl=self.impl)

    def extra_repr(self) -> str:
        dist = self.distribution if isinstance(self.distribution, str) else f"tensor{tuple(self.distribution.shape)}"
        return f"label_smoothing={self.label_smoothing}, distribution={dist}, reduction={self.reduction!r}"


class BCEWithLogitsLoss(nn.Module):
    """Module form of :func:`binary_cross_entropy_with_logits`."""

    def __init__(self, label_smoothing: float = 0.0, *, weight: Tensor | None = None,
                 pos_weight: Tensor | None = None, reduction: str = "mean", validate_args: bool = True) -> None:
        super().__init__()
        check_reduction(reduction)
        if not isinstance(label_smoothing, Tensor):
            check_label_smoothing(label_smoothing, torch.Size(), None)
        self.label_smoothing, self.reduction, self.validate_args = label_smoothing, reduction, validate_args
        _register_optional(self, "weight", weight)
        _register_optional(self, "pos_weight", pos_weight)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return binary_cross_entropy_with_logits(input, target, self.label_smoothing, weight=self.weight,
                                                pos_weight=self.pos_weight, reduction=self.reduction,
                                                validate_args=self.validate_args)
