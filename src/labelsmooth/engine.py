"""The one engine under every loss: row statistics, class targets, combination, reduction, gradient.

Every implementation shares one decomposition. For logits ``x`` of one row, ``lse = logsumexp(x)``,
class weights ``w`` (ones by default) and smoothing distribution ``u``, the loss needs only three
per-row statistics::

    lse,   x_y = x[y],   dot = sum_c w_c u(c | y) x_c

because ``-log p_c = lse - x_c``:

    nll    = w_y (lse - x_y)
    smooth = -sum_c w_c u(c | y) log p_c = (sum_c w_c u(c | y)) lse - dot
    loss   = (1 - eps) nll + eps smooth + z_loss lse^2

A *row-statistics provider* computes ``(lse, x_y, dot)`` and their gradient
``d/dx = g_lse softmax(x) + g_xy onehot(y) + g_dot w u(. | y)`` without building an (N, K)
one-hot, target or log-probability tensor; weights, eps, masks and reductions are then ordinary
torch ops on (N,) vectors. This module holds the torch provider (:func:`torch_row_statistics`);
the Triton kernel (:mod:`labelsmooth.ops.cross_entropy`), the fused linear loss and the
vocab-parallel loss provide the same statistics and share everything else here:
:func:`prepare_class_targets` (every class-index entry point starts there),
:func:`combine_row_statistics`, the reductions, and the gradient in closed form
(:func:`loss_gradient_coefficients`). The public functions live in :mod:`labelsmooth.losses`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ._checks import (
    ContentChecks,
    check_class_index_target,
    check_class_indices,
    check_class_weight,
    check_label_smoothing,
    check_logit_options,
    check_logits,
    check_reduction,
)
from .targets import Distribution, Smoothing, resolve_smoothing

__all__ = [
    "ClassTargets",
    "LossParts",
    "accumulation_dtype",
    "check_class_index_call",
    "class_target_loss",
    "combine_row_statistics",
    "loss_and_gradient",
    "loss_gradient_coefficients",
    "prepare_class_targets",
    "reduce_parts",
    "reduce_rows",
    "row_statistics",
    "row_statistics_gradient",
    "soft_target_loss",
    "to_rows",
    "torch_row_statistics",
    "writable_in_place",
]


class LossParts(NamedTuple):
    """``loss = (1 - eps) * nll + eps * smooth (+ z-loss)``, each reduced the same way."""

    loss: Tensor
    nll: Tensor
    smooth: Tensor


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Row statistics are kept in fp32, or fp64 for fp64 logits."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# 1. The torch row-statistics provider ------------------------------------------------------------

# The forward works on row blocks of at most this many elements (32 MiB of fp32): its temporaries
# (log-softmax, an fp32 copy of half logits, rows of a class-conditional matrix) stay block-sized,
# and the log-softmax workspace is reused, so fresh pages are touched once, not for every row.
FORWARD_BLOCK_ELEMENTS = 2**23


def block_statistics(x: Tensor, target: Tensor, vector: Tensor | None, matrix: Tensor | None,
                     workspace: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(lse, x_y, dot) of (B, K) fp32/fp64 logits ``x``; ``workspace`` (B, K) takes the log-softmax.

    ``lse = max_k x_k - max_k log_softmax(x)_k`` (the second max is ``-log sum exp(x - max)``), read
    off torch's fused log-softmax kernel; ``torch.logsumexp`` needs more passes and an ``exp`` that
    MKL threads on its own, which stalls for milliseconds on small inputs on busy cores.

    Example:
        >>> x = torch.tensor([[0.0, 1.0, 2.0], [1e4, 0.0, -1e4]])
        >>> lse, x_y, dot = block_statistics(x, torch.tensor([2, 1]), torch.full((3,), 1 / 3), None)
        >>> torch.allclose(lse, torch.logsumexp(x, dim=1)), x_y, dot
        (True, tensor([2., 0.]), tensor([1., 0.]))
    """
    lse = x.amax(dim=1) - torch.log_softmax(x, dim=1, out=workspace).amax(dim=1)
    target_logit = x.gather(1, target.unsqueeze(1)).squeeze(1)
    if vector is not None:
        dot = torch.mv(x, vector)
    elif matrix is not None:
        dot = torch.einsum("nk,nk->n", x, matrix[target])
    else:
        dot = torch.zeros_like(lse)
    return lse, target_logit, dot


def row_statistics(logits: Tensor, target: Tensor, vector: Tensor | None, matrix: Tensor | None
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """(lse, x_y, dot) of 2-D logits in fp32 (fp64 for fp64), by :func:`block_statistics` on row
    blocks of at most ``FORWARD_BLOCK_ELEMENTS`` (one block while compiling: inductor fuses the
    reductions without a workspace)."""
    acc = accumulation_dtype(logits.dtype)
    rows, num_classes = logits.shape
    block = rows if torch.compiler.is_compiling() else max(1, FORWARD_BLOCK_ELEMENTS // max(num_classes, 1))
    if block >= rows:
        return block_statistics(logits.to(acc), target, vector, matrix)
    workspace = logits.new_empty(block, num_classes, dtype=acc)
    parts = [block_statistics(logits[start:start + block].to(acc), target[start:start + block],
                              vector, matrix, workspace[:min(block, rows - start)])
             for start in range(0, rows, block)]
    return tuple(torch.cat(stat) for stat in zip(*parts))


def row_statistics_gradient(logits: Tensor, target: Tensor, lse: Tensor, vector: Tensor | None,
                            matrix: Tensor | None, grad_lse: Tensor, grad_target_logit: Tensor,
                            grad_dot: Tensor | None, *, inplace: bool = False) -> Tensor:
    """d/dx of ``sum(g_lse lse + g_xy x_y + g_dot dot)`` for 2-D logits x, in lse's dtype:

        d lse / d x_k = softmax_k,   d x_y / d x_k = [k == y],   d dot / d x_k = v_k (or V[y, k])

    so ``g_lse softmax + g_xy onehot(y) + g_dot v``, built in one (N, K) buffer: torch's softmax
    kernel writes it, or with ``inplace`` ``exp(x - lse)`` overwrites the logits' own storage
    (when they are already in lse's dtype).
    """
    acc = lse.dtype
    # 1. softmax into a fresh buffer (or the logits' own storage when allowed)
    if inplace and logits.dtype == acc:
        grad = logits.sub_(lse.unsqueeze(1)).exp_()
    else:
        grad = torch.softmax(logits, dim=1, dtype=acc)
    grad.mul_(grad_lse.unsqueeze(1))
    # 2. the smoothing term's dense part: rank one for a shared distribution
    if grad_dot is not None and vector is not None:
        grad.addr_(grad_dot, vector)
    elif grad_dot is not None and matrix is not None:
        grad.addcmul_(grad_dot.unsqueeze(1), matrix[target])
    # 3. the target logit's sparse part
    return grad.scatter_add_(1, target.unsqueeze(1), grad_target_logit.unsqueeze(1))


class _TorchRowStatistics(torch.autograd.Function):
    """(lse, x_y, dot) per row of 2-D logits (:func:`row_statistics`), with a one-buffer backward
    (:func:`row_statistics_gradient`; with ``inplace_backward`` into the logits' storage)."""

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, vector: Tensor | None, matrix: Tensor | None,
                inplace_backward: bool):
        lse, target_logit, dot = row_statistics(logits, target, vector, matrix)
        ctx.save_for_backward(logits, target, lse, vector, matrix)
        ctx.inplace_backward = inplace_backward
        return lse, target_logit, dot

    @staticmethod
    def backward(ctx, grad_lse: Tensor, grad_target_logit: Tensor, grad_dot: Tensor):
        logits, target, lse, vector, matrix = ctx.saved_tensors
        grad = row_statistics_gradient(logits, target, lse, vector, matrix, grad_lse, grad_target_logit,
                                       grad_dot, inplace=ctx.inplace_backward)
        if ctx.inplace_backward and grad.dtype != logits.dtype:
            grad = logits.copy_(grad)
        return grad.to(logits.dtype), None, None, None, None


def writable_in_place(input: Tensor, rows: Tensor) -> bool:
    """Whether the gradient of ``input`` may overwrite ``rows``, its (M, K) rows (a view or a copy).

    Not when ``input`` is a leaf or a view of one: its ``.grad`` would alias its data, or a
    parameter's values would be overwritten. Not when rows share memory (expanded, stride 0):
    they would race and cannot hold distinct gradients.

    >>> x = torch.randn(2, 3, requires_grad=True)
    >>> writable_in_place(x, x), writable_in_place(x * 2, x * 2), writable_in_place(x[:1].expand(2, 3) * 1, x)
    (False, True, True)
    >>> y = (x[:1] * 2).expand(2, 3)
    >>> writable_in_place(y, y)
    False
    """
    base = input if input._base is None else input._base
    if base.is_leaf:
        return False
    num_rows, num_classes = rows.shape
    return num_rows <= 1 or (rows.stride(1) == 1 and rows.stride(0) >= num_classes)


def torch_row_statistics(logits: Tensor, target: Tensor, smoothing: Smoothing | None,
                         softcap: float | None, inplace_backward: bool = False
                         ) -> tuple[Tensor, Tensor, Tensor]:
    """Row statistics with torch ops. ``logits`` (M, K); ``target`` (M,) int64, in range.
    ``inplace_backward`` is honoured only where :func:`writable_in_place` allows it."""
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    vector = matrix = None
    if smoothing is not None:
        vector, matrix = smoothing.vector, smoothing.matrix
    return _TorchRowStatistics.apply(logits, target, vector, matrix,
                                     inplace_backward and writable_in_place(logits, logits))


# 2. From row statistics to the loss ---------------------------------------------------------------


def reduce_rows(rows: Tensor, reduction: str, denominator: Tensor | None, shape: torch.Size) -> Tensor:
    if reduction == "none":
        return rows.reshape(shape)
    total = rows.sum()
    if reduction == "sum":
        return total
    return total / _nonzero(denominator)


def _nonzero(denominator: Tensor) -> Tensor:
    """The mean's denominator with 0 read as 1: a batch whose targets are all ignored gives 0
    (and zero gradients), not NaN."""
    return torch.where(denominator == 0, torch.ones_like(denominator), denominator)


def combine_row_statistics(lse: Tensor, target_logit: Tensor, dot: Tensor, *, target: Tensor,
                           valid: Tensor, smoothing: Smoothing | None, weight: Tensor | None,
                           label_smoothing: float | Tensor, z_loss: float, parts: bool = True
                           ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Per-row (loss, nll, smooth) from (lse, x_y, dot); ignored rows are exactly 0.

    ``target`` (M,) int64 in range (ignored rows hold any valid index), ``valid`` (M,) bool,
    ``label_smoothing`` a float or (M,) tensor. Without ``parts`` only the loss is returned
    (nll and smooth are None), a few operations fewer.
    """
    nll = lse - target_logit
    if weight is not None:
        nll = weight.to(lse.dtype)[target] * nll
    if smoothing is None:
        smooth = torch.zeros_like(nll) if parts else None
        loss = nll
    else:
        smooth = smoothing.row_mass(target) * lse - dot
        if smoothing.non_target:
            smooth = smooth - nll / (smoothing.num_classes - 1)
        eps = label_smoothing.to(lse.dtype) if isinstance(label_smoothing, Tensor) else label_smoothing
        loss = (1 - eps) * nll + eps * smooth  # not nll + eps (smooth - nll): inf - inf where x_y = -inf
    if z_loss:
        loss = loss + z_loss * lse.square()
    if not parts:
        return torch.where(valid, loss, 0.0), None, None
    return tuple(torch.where(valid, part, 0.0) for part in (loss, nll, smooth))


class ClassTargets(NamedTuple):
    """Class-index targets resolved for a row-statistics provider by :func:`prepare_class_targets`."""

    target: Tensor                   # (M,) int64; ignored rows hold 0, a valid index
    valid: Tensor                    # (M,) bool; False where the target equals ignore_index
    label_smoothing: float | Tensor  # a float, a 0-dim tensor or one value per row (M,)
    smoothing: Smoothing | None      # None when the loss needs no smoothing term
    shape: torch.Size                # the target's own shape, for reduction="none"
    row_weight: Tensor | None        # (M,) w_y of each row's target (None without class weights: ones)
    denominator: Tensor              # 0-dim: summed w_y of valid rows, what "mean" divides by


def prepare_class_targets(target: Tensor, num_classes: int, *, ignore_index: int,
                          label_smoothing: float | Tensor, distribution: Distribution,
                          weight: Tensor | None, dtype: torch.dtype, device: torch.device,
                          validate_args: bool, return_parts: bool) -> ClassTargets:
    """Check eps, target range and distribution (one host sync if ``validate_args``) and resolve them.

    Every class-index entry point (torch and Triton paths, linear, vocab-parallel) starts here.
    """
    checks = ContentChecks() if validate_args else None
    eps = check_label_smoothing(label_smoothing, target.shape, checks)
    check_class_indices(target, num_classes, ignore_index, checks)
    smoothing = resolve_smoothing(distribution, num_classes, weight, dtype, device, checks)
    if checks is not None:
        checks.raise_if_failed()
    flat_target = target.reshape(-1)
    valid = flat_target != ignore_index
    safe_target = torch.where(valid, flat_target, 0)
    if safe_target.dtype != torch.int64:
        safe_target = safe_target.long()
    needs_smoothing = return_parts or isinstance(eps, Tensor) or eps != 0.0
    if isinstance(eps, Tensor) and eps.dim():
        eps = eps.reshape(-1)
    if weight is None:
        w_y, denominator = None, valid.sum().to(dtype)
    else:
        w_y = weight.to(dtype)[safe_target]
        denominator = torch.where(valid, w_y, 0.0).sum()
    return ClassTargets(safe_target, valid, eps, smoothing if needs_smoothing else None, target.shape,
                        w_y, denominator)


def class_target_loss(lse: Tensor, target_logit: Tensor, dot: Tensor, targets: ClassTargets, *,
                      weight: Tensor | None, z_loss: float, reduction: str, dtype: torch.dtype,
                      return_parts: bool) -> Tensor | LossParts:
    """The reduced loss (or parts) from row statistics; ``mean`` divides by the summed ``w_y`` of valid rows."""
    rows = combine_row_statistics(lse, target_logit, dot, target=targets.target, valid=targets.valid,
                                  smoothing=targets.smoothing, weight=weight,
                                  label_smoothing=targets.label_smoothing, z_loss=z_loss, parts=return_parts)
    return reduce_parts(rows, reduction, targets.denominator, targets.shape, dtype, return_parts)


def reduce_parts(rows: tuple[Tensor, Tensor, Tensor], reduction: str, denominator: Tensor,
                 shape: torch.Size, dtype: torch.dtype, return_parts: bool) -> Tensor | LossParts:
    if not return_parts:
        return reduce_rows(rows[0], reduction, denominator, shape).to(dtype)
    return LossParts(*(reduce_rows(r, reduction, denominator, shape).to(dtype) for r in rows))


def to_rows(t: Tensor, num_classes: int) -> Tensor:
    """(N, K, d1, ...) -> (N * d1 * ..., K); a view for 2-D input."""
    return t if t.dim() == 2 else t.movedim(1, -1).reshape(-1, num_classes)


def check_class_index_call(caller: str, input: Tensor, target: Tensor, weight: Tensor | None, reduction: str,
                           softcap: float | None, z_loss: float) -> None:
    """ValueError unless ``input`` is (N, K, ...) logits, ``target`` class indices to match and the
    options valid, for the entry points that take nothing else (``caller`` names the function)."""
    check_reduction(reduction)
    check_logit_options(softcap, z_loss)
    check_logits(input)
    if input.dim() < 2 or not isinstance(target, Tensor) or target.is_floating_point():
        raise ValueError(f"{caller} takes (N, K, ...) logits and class-index targets; got input of shape "
                         f"{tuple(input.shape)} and target "
                         f"{target.dtype if isinstance(target, Tensor) else type(target).__name__} "
                         f"(use labelsmooth.cross_entropy for these)")
    check_class_index_target(input, target)
    check_class_weight(weight, input.shape[1])


# 3. Probability (soft) targets --------------------------------------------------------------------


def soft_target_loss(input: Tensor, target: Tensor, *, weight: Tensor | None, label_smoothing: float | Tensor,
                     distribution: Distribution, z_loss: float, softcap: float | None, reduction: str,
                     return_parts: bool, validate_args: bool) -> Tensor | LossParts:
    """The reduced loss (or parts) for probability targets q of ``input``'s shape, smoothed as
    ``q' = (1 - eps) q + eps q @ U``; ``mean`` divides by the row count, as torch does."""
    acc = accumulation_dtype(input.dtype)
    checks = ContentChecks() if validate_args else None
    num_classes = input.shape[1]
    eps = check_label_smoothing(label_smoothing, input.shape[:1] + input.shape[2:], checks)
    smoothing = resolve_smoothing(distribution, num_classes, weight, acc, input.device, checks)
    if checks is not None:
        checks.raise_if_failed()
    x = to_rows(input, num_classes).to(acc)
    q = to_rows(target, num_classes).to(acc)
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    lse = torch.logsumexp(x, dim=1, keepdim=True)
    neg_log_p = lse - x
    w = weight.to(acc) if weight is not None else 1.0
    nll = (q * w * neg_log_p).sum(1)
    # The smoothing distribution of a soft target is the q-weighted mix of u(. | y) (weights folded in).
    if smoothing.matrix is not None:
        u = q @ smoothing.matrix
    elif smoothing.non_target:
        u = (q.sum(1, keepdim=True) - q) * smoothing.vector
    else:
        u = smoothing.vector
    smooth = (u * neg_log_p).sum(1)
    eps = eps.reshape(-1).to(acc) if isinstance(eps, Tensor) and eps.dim() else eps
    loss = (1 - eps) * nll + eps * smooth
    if z_loss:
        loss = loss + z_loss * lse.squeeze(1).square()
    denominator = torch.tensor(float(loss.numel()), dtype=acc, device=input.device)
    return reduce_parts((loss, nll, smooth), reduction, denominator, target.shape[:1] + target.shape[2:],
                        input.dtype, return_parts)


# 4. The gradient in closed form --------------------------------------------------------------------


def loss_gradient_coefficients(targets: ClassTargets, *, z_loss: float, reduction: str, dtype: torch.dtype
                               ) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """Per-row (a, b, g_xy, g_dot) with g_lse = a + b lse (b None without z-loss): the derivative
    of the reduced loss (for ``reduction="none"``, of the summed rows) with respect to the row
    statistics.

    From :func:`combine_row_statistics`: ``nll = w_y (lse - x_y)``, ``smooth = m_y lse - dot
    - c_y (lse - x_y)`` (``c_y = w_y / (K - 1)`` for non_target, else 0) and
    ``loss = (1 - eps) nll + eps smooth + z_loss lse^2``, times ``s = valid`` (divided by the
    denominator for ``mean``); ``w_y`` None means 1.
    """
    s = targets.valid.to(dtype)
    if reduction == "mean":
        s = s * (1 / _nonzero(targets.denominator))
    eps, w_y, smoothing = targets.label_smoothing, targets.row_weight, targets.smoothing
    eps = eps.to(dtype) if isinstance(eps, Tensor) else eps
    own = 1 - eps if w_y is None else (1 - eps) * w_y  # what multiplies lse - x_y, before non_target
    if smoothing is None:
        a = s * own
    else:
        mass = smoothing.row_mass(targets.target)
        if smoothing.non_target:
            own = own - eps * (w_y if w_y is not None else 1.0) / (smoothing.num_classes - 1)
        a = s * (own + eps * mass)
    b = 2 * z_loss * s if z_loss else None
    g_xy = (s * own).neg_()
    g_dot = s * (-eps) if smoothing is not None else torch.zeros_like(s)
    return a, b, g_xy, g_dot


def loss_and_gradient(input: Tensor, targets: ClassTargets, *, weight: Tensor | None, z_loss: float,
                      softcap: float | None, reduction: str) -> tuple[Tensor, Tensor]:
    """``(loss, d loss.sum() / d input)`` of (N, K, ...) logits, without autograd: the torch row
    statistics, the loss from them, and the gradient from :func:`loss_gradient_coefficients`."""
    num_classes = input.shape[1]
    acc = accumulation_dtype(input.dtype)
    vector = matrix = None
    if targets.smoothing is not None:
        vector, matrix = targets.smoothing.vector, targets.smoothing.matrix
    with torch.no_grad():
        # 1. the row statistics of the (capped) logits, and the loss from them
        logits = to_rows(input, num_classes)
        if softcap is not None:
            logits = softcap * torch.tanh(logits.to(acc) / softcap)
        lse, target_logit, dot = row_statistics(logits, targets.target, vector, matrix)
        loss = class_target_loss(lse, target_logit, dot, targets, weight=weight, z_loss=z_loss,
                                 reduction=reduction, dtype=input.dtype, return_parts=False)
        # 2. d(loss)/d(statistics), then d/dx of the statistics
        a, b, g_xy, g_dot = loss_gradient_coefficients(targets, z_loss=z_loss, reduction=reduction, dtype=acc)
        grad = row_statistics_gradient(logits, targets.target, lse, vector, matrix,
                                       a if b is None else torch.addcmul(a, b, lse), g_xy,
                                       g_dot if targets.smoothing is not None else None)
        if softcap is not None:  # d(c tanh(x / c))/dx = 1 - tanh^2
            grad.mul_(1 - (logits / softcap).square())
        if input.dim() > 2:
            grad = grad.view(input.shape[0], *input.shape[2:], num_classes).movedim(-1, 1)
    return loss, grad.to(input.dtype)
