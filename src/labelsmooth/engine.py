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

import functools
from typing import Callable, NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._checks import (
    ContentChecks,
    check_class_index_target,
    check_class_indices,
    check_class_weight,
    check_ignore_index,
    check_label_smoothing,
    check_logit_options,
    check_logits,
    check_mean_denominator,
    check_probabilities,
    check_reduction,
)
from .targets import Distribution, Smoothing, named_distribution, resolve_smoothing

__all__ = [
    "ClassTargets",
    "LossParts",
    "accumulation_dtype",
    "check_class_index_call",
    "check_class_targets",
    "class_target_loss",
    "combine_row_statistics",
    "direct_loss_and_gradient",
    "loss_and_gradient",
    "loss_gradient_coefficients",
    "mean_denominator",
    "prepare_class_targets",
    "reduce_parts",
    "reduce_rows",
    "row_statistics",
    "row_correct",
    "row_statistics_gradient",
    "single_backward",
    "soft_target_loss",
    "softcapped",
    "to_rows",
    "torch_row_statistics",
    "update_running_argmax",
    "writable_in_place",
]


class _LossPartsFields(NamedTuple):
    loss: Tensor
    nll: Tensor
    smooth: Tensor


class LossParts(_LossPartsFields):
    """``loss = (1 - eps) * nll + eps * smooth + z_loss``, each part reduced the same way.

    A named tuple of the three fields ``(loss, nll, smooth)``, so ``loss, nll, smooth = parts``
    works as it always has; later parts are attributes outside the tuple (as ``os.stat_result``
    grew its ``st_*_ns`` fields), so unpacking, ``len`` and ``_fields`` stay those of the three:

    - ``z_loss``: the z-loss term ``z_loss * lse**2``, reduced like the others (zeros without z-loss);
    - ``accuracy``: whether the arg-max of the logits (the first index wins ties) is the target,
      over the non-ignored rows: their mean for ``"mean"``, their count for ``"sum"``, 0/1 per row
      for ``"none"`` (ignored rows 0); fp32 (fp64 for fp64 logits); None for probability targets.

    Example:
        >>> import torch, labelsmooth
        >>> parts = labelsmooth.cross_entropy(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]),
        ...                                   z_loss=0.01, return_parts=True)
        >>> loss, nll, smooth = parts
        >>> parts.accuracy, torch.allclose(parts.z_loss, 0.01 * torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        ...                                               .logsumexp(1).square().mean())
        (tensor(0.5000), True)
    """

    z_loss: Tensor | None
    accuracy: Tensor | None

    def __new__(cls, loss: Tensor, nll: Tensor, smooth: Tensor, z_loss: Tensor | None = None,
                accuracy: Tensor | None = None) -> "LossParts":
        parts = super().__new__(cls, loss, nll, smooth)
        parts.z_loss, parts.accuracy = z_loss, accuracy
        return parts

    def __getnewargs__(self) -> tuple:  # copy and pickle keep the attributes
        return (*self, self.z_loss, self.accuracy)

    def __repr__(self) -> str:
        return (f"LossParts(loss={self.loss!r}, nll={self.nll!r}, smooth={self.smooth!r}, "
                f"z_loss={self.z_loss!r}, accuracy={self.accuracy!r})")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Row statistics are kept in fp32, or fp64 for fp64 logits."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# 1. The torch row-statistics provider ------------------------------------------------------------

# The forward works on row blocks of at most this many elements (32 MiB of fp32): its temporaries
# (log-softmax, an fp32 copy of half logits, rows of a class-conditional matrix) stay block-sized,
# and the log-softmax workspace is reused, so fresh pages are touched once, not for every row.
FORWARD_BLOCK_ELEMENTS = 2**23


def softcapped(x: Tensor, softcap: float | None) -> Tensor:
    """``softcap * tanh(x / softcap)`` (``x`` itself without a softcap), out of place."""
    return x if softcap is None else softcap * torch.tanh(x / softcap)


def block_statistics(x: Tensor, target: Tensor, vector: Tensor | None, matrix: Tensor | None,
                     workspace: Tensor | None = None, predictions: bool = False) -> tuple[Tensor, ...]:
    """(lse, x_y, dot) of (B, K) fp32/fp64 logits ``x``; ``workspace`` (B, K) takes the log-softmax.
    With ``predictions``, a fourth (B,) int64: each row's arg-max (the first index wins ties),
    from the same pass as the row maximum.

    ``lse = max_k x_k - max_k log_softmax(x)_k`` (the second max is ``-log sum exp(x - max)``), read
    off torch's fused log-softmax kernel; ``torch.logsumexp`` needs more passes and an ``exp`` that
    MKL threads on its own, which stalls for milliseconds on small inputs on busy cores. Without a
    workspace every step is differentiable (twice: the backward for double backward uses it).

    Example:
        >>> x = torch.tensor([[0.0, 1.0, 2.0], [1e4, 0.0, -1e4]])
        >>> lse, x_y, dot = block_statistics(x, torch.tensor([2, 1]), torch.full((3,), 1 / 3), None)
        >>> torch.allclose(lse, torch.logsumexp(x, dim=1)), x_y, dot
        (True, tensor([2., 0.]), tensor([1., 0.]))
    """
    if predictions:
        row_max, prediction = x.max(dim=1)
    else:
        row_max, prediction = x.amax(dim=1), None
    lse = row_max - torch.log_softmax(x, dim=1, out=workspace).amax(dim=1)
    target_logit = x.gather(1, target.unsqueeze(1)).squeeze(1)
    if vector is not None:
        dot = torch.mv(x, vector)
    elif matrix is not None:
        dot = torch.einsum("nk,nk->n", x, matrix[target])
    else:
        dot = torch.zeros_like(lse)
    return (lse, target_logit, dot) if prediction is None else (lse, target_logit, dot, prediction)


def row_statistics(logits: Tensor, target: Tensor, vector: Tensor | None, matrix: Tensor | None,
                   softcap: float | None = None, predictions: bool = False) -> tuple[Tensor, ...]:
    """(lse, x_y, dot) (and the arg-max with ``predictions``) of 2-D logits, softcapped in fp32
    (fp64 for fp64), by :func:`block_statistics` on row blocks of at most ``FORWARD_BLOCK_ELEMENTS``
    (one block while compiling: inductor fuses the reductions without a workspace)."""
    acc = accumulation_dtype(logits.dtype)
    rows, num_classes = logits.shape
    block = rows if torch.compiler.is_compiling() else max(1, FORWARD_BLOCK_ELEMENTS // max(num_classes, 1))
    if block >= rows:
        return block_statistics(softcapped(logits.to(acc), softcap), target, vector, matrix,
                                predictions=predictions)
    workspace = logits.new_empty(block, num_classes, dtype=acc)
    parts = [block_statistics(softcapped(logits[start:start + block].to(acc), softcap), target[start:start + block],
                              vector, matrix, workspace[:min(block, rows - start)], predictions)
             for start in range(0, rows, block)]
    return tuple(torch.cat(stat) for stat in zip(*parts))


def update_running_argmax(best: Tensor, index: Tensor, block: Tensor, offset: int) -> None:
    """Arg-max over column blocks of the same rows, one block at a time: the block's row maximum
    replaces ``best`` (and ``index``, its column plus ``offset``) only where strictly larger, so the
    first index wins ties, as in ``argmax``. ``best`` (M,), ``index`` (M,) int64, ``block`` (M, B)."""
    block_max, block_argmax = block.max(1)
    better = block_max > best
    best.copy_(torch.where(better, block_max, best))
    index.copy_(torch.where(better, block_argmax + offset, index))


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
    (:func:`row_statistics_gradient`; with ``inplace_backward`` into the logits' storage).

    Under ``create_graph=True`` the backward is built from differentiable torch ops instead, so
    second derivatives (double backward, ``torch.autograd.gradgradcheck``) work as with torch's loss.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, vector: Tensor | None, matrix: Tensor | None,
                softcap: float | None, inplace_backward: bool, predictions: bool):
        statistics = row_statistics(logits, target, vector, matrix, softcap, predictions)
        ctx.save_for_backward(logits, target, statistics[0], vector, matrix)
        ctx.softcap, ctx.inplace_backward = softcap, inplace_backward
        if predictions:
            ctx.mark_non_differentiable(statistics[3])
        return statistics

    @staticmethod
    def backward(ctx, grad_lse: Tensor, grad_target_logit: Tensor, grad_dot: Tensor, *unused):
        logits, target, lse, vector, matrix = ctx.saved_tensors
        upstream = (grad_lse, grad_target_logit, grad_dot)
        if torch.is_grad_enabled():  # create_graph=True: a gradient that can be differentiated again
            statistics = block_statistics(softcapped(logits.to(lse.dtype), ctx.softcap), target, vector, matrix)
            used = [(s, g) for s, g in zip(statistics, upstream) if s.requires_grad]
            grad = torch.autograd.grad([s for s, _ in used], logits, [g for _, g in used], create_graph=True)[0]
            return grad, None, None, None, None, None, None
        if ctx.softcap is None:
            grad = row_statistics_gradient(logits, target, lse, vector, matrix, *upstream,
                                           inplace=ctx.inplace_backward)
        else:  # the capped logits in a fresh buffer, then d(c tanh(x / c))/dx = 1 - tanh^2
            tanh = torch.tanh(logits.to(lse.dtype) / ctx.softcap)
            grad = row_statistics_gradient(tanh * ctx.softcap, target, lse, vector, matrix, *upstream, inplace=True)
            grad.mul_(tanh.square_().neg_().add_(1))
        if ctx.inplace_backward and grad.dtype != logits.dtype:
            grad = logits.copy_(grad)
        return grad.to(logits.dtype), None, None, None, None, None, None


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
                         softcap: float | None, inplace_backward: bool = False,
                         predictions: bool = False) -> tuple[Tensor, ...]:
    """Row statistics with torch ops. ``logits`` (M, K); ``target`` (M,) int64, in range.

    The provider contract: ``(lse, x_y, dot)`` in fp32 (fp64 for fp64 logits), softcap applied in
    that precision, differentiable in ``logits``; with ``predictions``, a fourth (M,) int64 tensor,
    the arg-max of each row (the first index wins ties), for the accuracy of ``return_parts``.
    ``inplace_backward`` is honoured only where :func:`writable_in_place` allows it.
    """
    vector = matrix = None
    if smoothing is not None:
        vector, matrix = smoothing.vector, smoothing.matrix
    return _TorchRowStatistics.apply(logits, target, vector, matrix, softcap,
                                     inplace_backward and writable_in_place(logits, logits), predictions)


def single_backward(what: str) -> Callable[[Callable], Callable]:
    """Decorator for an ``autograd.Function.backward`` that is not itself differentiable (a kernel,
    or gradients formed in forward): it raises under ``create_graph=True``, where torch's
    ``once_differentiable`` alone would return a gradient cut off from the inputs, so that a
    gradient penalty built on it would silently contribute nothing.

    Example (``what`` names the fast path in the message):
        >>> class Twice(torch.autograd.Function):
        ...     forward = staticmethod(lambda ctx, x: 2 * x)
        ...     backward = staticmethod(single_backward("Twice")(lambda ctx, g: 2 * g))
        >>> x = torch.ones(2, requires_grad=True)
        >>> torch.autograd.grad(Twice.apply(x).sum(), x, create_graph=True)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        RuntimeError: Twice is differentiable once only: backward with create_graph=True ...
    """
    def decorate(backward: Callable) -> Callable:
        once = once_differentiable(backward)

        @functools.wraps(backward)
        def checked(ctx, *grads):
            if torch.is_grad_enabled():
                raise RuntimeError(f"{what} is differentiable once only: backward with create_graph=True "
                                   f"(double backward, gradient penalties) needs impl=\"torch\" of "
                                   f"labelsmooth.cross_entropy")
            return once(ctx, *grads)

        return checked

    return decorate


# 2. From row statistics to the loss ---------------------------------------------------------------


def reduce_rows(rows: Tensor, reduction: str, denominator: Tensor | float | None, shape: torch.Size) -> Tensor:
    """``rows`` reshaped to ``shape`` (``"none"``), summed, or summed and divided by ``denominator``."""
    if reduction == "none":
        return rows.reshape(shape)
    total = rows.sum()
    if reduction == "sum":
        return total
    return total / denominator


def mean_denominator(weight_total: Tensor, valid: Tensor) -> Tensor:
    """What ``reduction="mean"`` divides by: the summed ``w_y`` of the non-ignored rows, or 1 when
    every row is ignored (the loss is then 0, with zero gradients, not NaN).

    A zero or negative total with non-ignored rows is divided by as written (as torch does:
    inf or NaN for 0); ``validate_args`` refuses it first (``_checks.check_mean_denominator``).
    """
    return torch.where(valid.any(), weight_total, torch.ones_like(weight_total))


def combine_row_statistics(lse: Tensor, target_logit: Tensor, dot: Tensor, *, target: Tensor,
                           valid: Tensor, smoothing: Smoothing | None, weight: Tensor | None,
                           label_smoothing: float | Tensor, z_loss: float, parts: bool = True
                           ) -> tuple[Tensor, ...]:
    """Per-row (loss, nll, smooth, z-loss term) from (lse, x_y, dot); ignored rows are exactly 0.

    ``target`` (M,) int64 in range (ignored rows hold any valid index), ``valid`` (M,) bool,
    ``label_smoothing`` a float or (M,) tensor. Without ``parts`` only the loss is returned
    (a 1-tuple), a few operations fewer.
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
        # a row with eps = 0 is its NLL also where smooth is inf (a masked class): 0 * inf would be nan
        loss = torch.where(eps == 0, nll, loss) if isinstance(eps, Tensor) else nll if eps == 0 else loss
    z_term = z_loss * lse.square() if z_loss else None
    if z_term is not None:
        loss = loss + z_term
    if not parts:
        return (torch.where(valid, loss, 0.0),)
    if z_term is None:
        z_term = torch.zeros_like(nll)
    return tuple(torch.where(valid, part, 0.0) for part in (loss, nll, smooth, z_term))


class ClassTargets(NamedTuple):
    """Class-index targets resolved for a row-statistics provider by :func:`prepare_class_targets`."""

    target: Tensor                   # (M,) int64; ignored rows hold 0, a valid index
    valid: Tensor                    # (M,) bool; False where the target equals ignore_index
    label_smoothing: float | Tensor  # a float, a 0-dim tensor or one value per row (M,)
    smoothing: Smoothing | None      # None when the loss needs no smoothing term
    shape: torch.Size                # the target's own shape, for reduction="none"
    row_weight: Tensor | None        # (M,) w_y of each row's target (None without class weights: ones)
    denominator: Tensor              # 0-dim: what "mean" divides by, see mean_denominator


def check_class_targets(target: Tensor, num_classes: int, ignore_index: int, label_smoothing: float | Tensor,
                        validate_args: bool) -> tuple[float | Tensor, ContentChecks | None]:
    """The checks every class-index entry point starts with: ``ignore_index`` (raised now), eps and
    the class indices (queued on the returned :class:`ContentChecks`, None without
    ``validate_args``, for the caller to add its own and raise once). Returns (eps, checks)."""
    check_ignore_index(ignore_index)
    checks = ContentChecks() if validate_args else None
    eps = check_label_smoothing(label_smoothing, target.shape, checks)
    check_class_indices(target, num_classes, ignore_index, checks)
    return eps, checks


def prepare_class_targets(target: Tensor, num_classes: int, *, ignore_index: int,
                          label_smoothing: float | Tensor, distribution: Distribution,
                          weight: Tensor | None, dtype: torch.dtype, device: torch.device,
                          validate_args: bool, return_parts: bool, reduction: str,
                          weight_name: str = "weight") -> ClassTargets:
    """Check eps, target range, distribution and the mean's denominator (one host sync if
    ``validate_args``) and resolve them.

    Every class-index entry point (torch and Triton paths, linear, vocab-parallel) starts here;
    ``weight_name`` is what the caller calls its class weights, for the messages.
    """
    eps, checks = check_class_targets(target, num_classes, ignore_index, label_smoothing, validate_args)
    smoothing = resolve_smoothing(distribution, num_classes, weight, dtype, device, checks)
    flat_target = target.reshape(-1)
    valid = flat_target != ignore_index
    safe_target = torch.where(valid, flat_target, 0)
    if safe_target.dtype != torch.int64:
        safe_target = safe_target.long()
    if weight is None:
        w_y, weight_total = None, valid.sum().to(dtype)
    else:
        # While checking, out-of-range targets are clamped for this lookup only: they raise below.
        w_y = weight.to(dtype)[safe_target if checks is None else safe_target.clamp(0, num_classes - 1)]
        weight_total = torch.where(valid, w_y, 0.0).sum()
        check_mean_denominator(weight_total, valid, checks, reduction=reduction, name=weight_name)
    if checks is not None:
        checks.raise_if_failed()
    needs_smoothing = return_parts or isinstance(eps, Tensor) or eps != 0.0
    if isinstance(eps, Tensor) and eps.dim():
        eps = eps.reshape(-1)
    return ClassTargets(safe_target, valid, eps, smoothing if needs_smoothing else None, target.shape,
                        w_y, mean_denominator(weight_total, valid))


def class_target_loss(lse: Tensor, target_logit: Tensor, dot: Tensor, targets: ClassTargets, *,
                      weight: Tensor | None, z_loss: float, reduction: str, dtype: torch.dtype,
                      return_parts: bool, prediction: Tensor | None = None) -> Tensor | LossParts:
    """The reduced loss (or parts) from row statistics; ``mean`` divides by the summed ``w_y`` of
    valid rows. ``prediction`` (M,): each row's arg-max, for the parts' accuracy."""
    rows = combine_row_statistics(lse, target_logit, dot, target=targets.target, valid=targets.valid,
                                  smoothing=targets.smoothing, weight=weight,
                                  label_smoothing=targets.label_smoothing, z_loss=z_loss, parts=return_parts)
    return reduce_parts(rows, reduction, targets.denominator, targets.shape, dtype, return_parts,
                        correct=None if prediction is None else row_correct(prediction, targets),
                        valid=targets.valid)


def row_correct(prediction: Tensor, targets: ClassTargets) -> Tensor:
    """(M,) bool: the row is not ignored and its arg-max ``prediction`` is its target."""
    return (prediction == targets.target) & targets.valid


def reduce_parts(rows: tuple[Tensor, ...], reduction: str, denominator: Tensor | float,
                 shape: torch.Size, dtype: torch.dtype, return_parts: bool,
                 correct: Tensor | None = None, valid: Tensor | None = None) -> Tensor | LossParts:
    """The loss, or :class:`LossParts` from per-row (loss, nll, smooth, z-loss term), each reduced
    the same way; the accuracy from ``correct`` (M,) bool is the mean over the ``valid`` rows
    (where ``correct`` implies ``valid``; all rows when None), 0 when there are none."""
    if not return_parts:
        return reduce_rows(rows[0], reduction, denominator, shape).to(dtype)
    accuracy = None
    if correct is not None:
        count = len(correct) if valid is None else valid.sum()
        accuracy = reduce_rows(correct.to(accumulation_dtype(dtype)), reduction,
                               count.clamp(min=1) if isinstance(count, Tensor) else max(count, 1), shape)
    loss, nll, smooth, z_term = (reduce_rows(r, reduction, denominator, shape).to(dtype) for r in rows)
    return LossParts(loss, nll, smooth, z_loss=z_term, accuracy=accuracy)


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
    ``q' = (1 - eps) q + eps q @ U``; ``mean`` divides by the row count, as torch does (an empty
    batch gives 0). With ``validate_args``, q must hold probabilities summing to 1 over dim 1.
    The parts have no accuracy (None): there is no one class to compare the arg-max with."""
    acc = accumulation_dtype(input.dtype)
    checks = ContentChecks() if validate_args else None
    num_classes = input.shape[1]
    eps = check_label_smoothing(label_smoothing, input.shape[:1] + input.shape[2:], checks)
    check_probabilities(target, "target", checks, sum_dim=1)
    smoothing = resolve_smoothing(distribution, num_classes, weight, acc, input.device, checks)
    if checks is not None:
        checks.raise_if_failed()
    x = softcapped(to_rows(input, num_classes).to(acc), softcap)
    q = to_rows(target, num_classes).to(acc)
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
    z_term = z_loss * lse.squeeze(1).square() if z_loss else torch.zeros_like(nll)
    loss = (1 - eps) * nll + eps * smooth + z_term
    return reduce_parts((loss, nll, smooth, z_term), reduction, max(loss.numel(), 1),
                        target.shape[:1] + target.shape[2:], input.dtype, return_parts)


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
        s = s * (1 / targets.denominator)
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
            logits = softcapped(logits.to(acc), softcap)
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


def direct_loss_and_gradient(input: Tensor, target: Tensor, *, ignore_index: int, label_smoothing: float | Tensor,
                             distribution: str, reduction: str, validate_args: bool) -> tuple[Tensor, Tensor]:
    r""":func:`loss_and_gradient` for (N, K) logits, a named distribution and no class weights,
    z-loss or softcap, from the log-probabilities in about twenty operations instead of about
    a hundred: on the small batches of hand-written training loops the operations' fixed cost,
    not their arithmetic, is the loss's cost. Checks and messages are those of
    :func:`prepare_class_targets`.

    With ``log p = log_softmax(x)`` (fp32, fp64 for fp64) and ``c`` the value of ``u`` (1/K for
    ``uniform``; 1/(K - 1) off the target and 0 on it for ``non_target``)::

        nll    = -log p_y
        smooth = -c (sum_k log p_k - [non_target] log p_y)
        loss   = (1 - eps) nll + eps smooth
        d loss / d x_k = p_k - q_k,   q = (1 - eps) onehot(y) + eps u
                       = p_k - eps c + [k == y] (eps c [non_target] + eps - 1)

    Ignored rows have loss 0 and gradient 0; ``mean`` divides both by the number of the others
    (by 1 when every row is ignored).
    """
    eps, checks = check_class_targets(target, input.shape[1], ignore_index, label_smoothing, validate_args)
    constant, non_target = named_distribution(distribution, input.shape[1])
    if checks is not None:
        checks.raise_if_failed()
    acc = accumulation_dtype(input.dtype)
    if isinstance(eps, Tensor):
        eps = eps if eps.dtype == acc else eps.to(acc)
        eps = eps if eps.dim() == 0 else eps.unsqueeze(1)
    ignored = target.eq(ignore_index).unsqueeze(1)
    index = target.unsqueeze(1).masked_fill(ignored, 0)
    if index.dtype != torch.int64:
        index = index.long()
    with torch.no_grad():
        log_p = torch.log_softmax(input, 1) if input.dtype == acc else torch.log_softmax(input, 1, dtype=acc)
        # 1. the loss, per row as (N, 1) columns
        nll = log_p.gather(1, index).neg_()
        if isinstance(eps, Tensor) or eps != 0:  # (not a lerp: inf - inf where both terms are inf)
            smooth = log_p.sum(1, keepdim=True).neg_()
            if non_target:
                smooth.sub_(nll)
            smooth.mul_(constant)
            if isinstance(eps, Tensor):  # a row with eps = 0 is its NLL, also where smooth is inf
                loss = torch.where(eps == 0, nll, torch.addcmul(nll * (1 - eps), smooth, eps))
            else:
                loss = torch.add(nll * (1 - eps), smooth, alpha=eps)
        else:
            loss = nll
        loss = loss.masked_fill_(ignored, 0.0).view(target.shape)
        # 2. the gradient, in the log-probabilities' buffer
        grad = log_p.exp_()
        if isinstance(eps, Tensor) or eps != 0:
            grad.sub_(eps * constant)
        on_target = eps * (constant + 1) - 1 if non_target else eps - 1
        if not isinstance(on_target, Tensor):
            on_target = nll.new_full((), on_target)
        grad.scatter_add_(1, index, on_target.expand_as(nll)).masked_fill_(ignored, 0.0)
        if reduction != "none":
            loss = loss.sum()
        if reduction == "mean":
            valid = ~ignored
            denominator = mean_denominator(valid.sum().to(acc), valid)
            loss = loss / denominator
            grad.div_(denominator)
    if input.dtype != acc:
        loss, grad = loss.to(input.dtype), grad.to(input.dtype)
    return loss, grad
