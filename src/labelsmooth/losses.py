"""Label-smoothed cross-entropy (the reference torch path) and the modules that wrap it.

Every implementation shares one decomposition. For logits ``x`` of one row, ``lse = logsumexp(x)``,
class weights ``w`` (ones by default) and smoothing distribution ``u``, the loss needs only three
per-row statistics::

    lse,   x_y = x[y],   dot = sum_c w_c u(c | y) x_c

because ``-log p_c = lse - x_c``:

    nll    = w_y (lse - x_y)
    smooth = -sum_c w_c u(c | y) log p_c = (sum_c w_c u(c | y)) lse - dot
    loss   = (1 - eps) nll + eps smooth + z_loss lse^2

A *row-statistics provider* (``impl``) computes ``(lse, x_y, dot)`` and their gradient
``d/dx = g_lse softmax(x) + g_xy onehot(y) + g_dot w u(. | y)`` without building an (N, K)
one-hot, target or log-probability tensor; weights, eps, masks and reductions are then ordinary
torch ops on (N,) vectors. The Triton kernel (``impl="triton"``) and the vocab-parallel loss
provide the same statistics, so they share everything below.
"""

from __future__ import annotations

import importlib
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .targets import (
    ContentChecks,
    Distribution,
    Smoothing,
    check_class_indices,
    check_class_weight,
    check_label_smoothing,
    check_logit_options,
    check_logits,
    check_reduction,
    resolve_smoothing,
)

__all__ = [
    "BCEWithLogitsLoss",
    "ClassTargets",
    "CrossEntropyLoss",
    "LossParts",
    "ROW_STATISTICS",
    "binary_cross_entropy_with_logits",
    "class_target_loss",
    "combine_row_statistics",
    "cross_entropy",
    "cross_entropy_with_grad",
    "loss_gradient_coefficients",
    "prepare_class_targets",
    "torch_row_statistics",
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


def torch_row_statistics(logits: Tensor, target: Tensor, smoothing: Smoothing | None,
                         softcap: float | None, inplace_backward: bool = False
                         ) -> tuple[Tensor, Tensor, Tensor]:
    """Row statistics with torch ops. ``logits`` (M, K); ``target`` (M,) int64, in range."""
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    vector = matrix = None
    if smoothing is not None:
        vector, matrix = smoothing.vector, smoothing.matrix
    return _TorchRowStatistics.apply(logits, target, vector, matrix, inplace_backward)


def _load_triton_row_statistics() -> Callable:
    return importlib.import_module("labelsmooth.ops.cross_entropy").row_statistics


# impl name -> loader of its row-statistics provider (loaders keep Triton out of `import labelsmooth`).
ROW_STATISTICS: dict[str, Callable[[], Callable]] = {
    "torch": lambda: torch_row_statistics,
    "triton": _load_triton_row_statistics,
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


# 2. From row statistics to the loss ---------------------------------------------------------------


def reduce_rows(rows: Tensor, reduction: str, denominator: Tensor | None, shape: torch.Size) -> Tensor:
    if reduction == "none":
        return rows.reshape(shape)
    total = rows.sum()
    if reduction == "sum":
        return total
    # mean: an empty denominator (every target ignored) gives 0, not NaN, and zero gradients.
    return total / torch.where(denominator == 0, torch.ones_like(denominator), denominator)


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


def check_class_index_target(input: Tensor, target: Tensor) -> None:
    """ValueError unless ``target`` holds class indices shaped like ``input`` (N, K, d1, ...) without K."""
    expected = input.shape[:1] + input.shape[2:]
    if target.shape != expected:
        raise ValueError(f"target must have shape {tuple(expected)} (input {tuple(input.shape)} "
                         f"without its class dimension) or be probabilities of shape "
                         f"{tuple(input.shape)}, got shape {tuple(target.shape)}")
    if target.dtype == torch.bool or target.is_complex():
        raise ValueError(f"target must hold integer class indices or probabilities, got dtype {target.dtype}")


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
    ignored gives 0 (and zero gradients) rather than NaN.

    Args:
        input: logits, (N, K), (N, K, d1, ...) or (K,).
        target: class indices (N,) / (N, d1, ...) / (), or probabilities with ``input``'s shape.
        weight: (K,) class weights, as in torch.
        ignore_index: targets equal to it contribute nothing to either term nor to the mean.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``; mean divides by the summed ``w_y`` of
            non-ignored rows (by the row count for probability targets).
        label_smoothing: eps, a float at most 1 or a per-sample tensor with the target's shape;
            negative values are negative label smoothing, computed as written.
        distribution: ``"uniform"`` (eps/K), ``"non_target"`` (eps/(K-1) off the target), a (K,)
            prior, or a (K, K) class-conditional tensor (row y is ``u(. | y)``).
        z_loss: adds ``z_loss * lse**2`` per row.
        softcap: applies ``softcap * tanh(x / softcap)`` to the logits first.
        return_parts: return ``LossParts(loss, nll, smooth)``, all reduced the same way.
        inplace_backward: let backward write the gradient into the logits' storage (the caller's
            logits are overwritten). Saves one (N, K) buffer when the logits come from a layer;
            for a leaf tensor autograd copies the gradient into ``.grad`` anyway.
        validate_args: check tensor contents (target range, priors, eps) with one host sync.
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
            parts = LossParts(*(p.squeeze(0) for p in parts))
        return parts if return_parts else parts.loss
    if input.dim() == 0:
        raise ValueError("input must have a class dimension, got a 0-dim tensor")
    num_classes = input.shape[1]
    check_class_weight(weight, num_classes)
    check_logit_options(softcap, z_loss)
    acc = accumulation_dtype(input.dtype)

    if target.is_floating_point():
        rows = _soft_target_rows(input, target, weight, label_smoothing, distribution, z_loss,
                                 softcap, ContentChecks() if validate_args else None, acc)
        denominator = torch.tensor(float(rows[0].numel()), dtype=acc, device=input.device)
        return reduce_parts(rows, reduction, denominator, target.shape[:1] + target.shape[2:], input.dtype,
                             return_parts)
    check_class_index_target(input, target)
    targets = prepare_class_targets(target, num_classes, ignore_index=ignore_index,
                                    label_smoothing=label_smoothing, distribution=distribution, weight=weight,
                                    dtype=acc, device=input.device, validate_args=validate_args,
                                    return_parts=return_parts)
    provider = resolve_impl(impl, input)
    lse, target_logit, dot = provider(to_rows(input, num_classes), targets.target, targets.smoothing, softcap,
                                      inplace_backward)
    return class_target_loss(lse, target_logit, dot, targets, weight=weight, z_loss=z_loss, reduction=reduction,
                             dtype=input.dtype, return_parts=return_parts)


def loss_gradient_coefficients(valid: Tensor, w_y: Tensor | None, eps: float | Tensor,
                               smoothing: Smoothing | None, target: Tensor, z_loss: float, scale: Tensor | float,
                               dtype: torch.dtype) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """Per-row (a, b, g_xy, g_dot) with g_lse = a + b lse (b None without z-loss): the derivative
    of the summed loss rows, times ``scale``, with respect to the row statistics.

    From :func:`combine_row_statistics`: ``nll = w_y (lse - x_y)``, ``smooth = m_y lse - dot
    - c_y (lse - x_y)`` (``c_y = w_y / (K - 1)`` for non_target, else 0) and
    ``loss = (1 - eps) nll + eps smooth + z_loss lse^2``, times ``s = valid * scale``; ``w_y``
    None means 1.
    """
    s = valid.to(dtype)
    if not (isinstance(scale, float) and scale == 1.0):
        s = s * scale
    own = 1 - eps if w_y is None else (1 - eps) * w_y  # what multiplies lse - x_y, before non_target
    if smoothing is None:
        a = s * own
    else:
        mass = smoothing.row_mass(target)
        if smoothing.non_target:
            own = own - eps * (w_y if w_y is not None else 1.0) / (smoothing.num_classes - 1)
        a = s * (own + eps * mass)
    b = 2 * z_loss * s if z_loss else None
    g_xy = (s * own).neg_()
    g_dot = s * (-eps) if smoothing is not None else torch.zeros_like(s)
    return a, b, g_xy, g_dot


def cross_entropy_with_grad(input: Tensor, target: Tensor, weight: Tensor | None = None, ignore_index: int = -100,
                            reduction: str = "mean", label_smoothing: float | Tensor = 0.0, *,
                            distribution: Distribution = "uniform", z_loss: float = 0.0,
                            softcap: float | None = None, validate_args: bool = True) -> tuple[Tensor, Tensor]:
    r"""The loss of :func:`cross_entropy` and its gradient, together, without autograd.

    Returns ``(loss, grad)`` with ``grad = d loss.sum() / d input`` (for ``reduction="none"``,
    each row's loss differentiated with respect to its own logits), shaped and typed like
    ``input``. For training loops that apply gradients themselves (hand-written backward passes,
    pipeline schedules, many small steps): it runs the same row statistics and the same formula
    as :func:`cross_entropy`, and the gradient in closed form (see ``loss_gradient_coefficients``),
    with no autograd graph to build or walk, which is most of the loss's cost on small batches.

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
    num_classes = input.shape[1]
    acc = accumulation_dtype(input.dtype)
    targets = prepare_class_targets(target, num_classes, ignore_index=ignore_index,
                                    label_smoothing=label_smoothing, distribution=distribution, weight=weight,
                                    dtype=acc, device=input.device, validate_args=validate_args,
                                    return_parts=False)
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
        # 2. d(sum of the loss)/d(statistics), then d/dx of the statistics
        denominator = targets.denominator
        scale = (1 / torch.where(denominator == 0, torch.ones_like(denominator), denominator)
                 if reduction == "mean" else 1.0)
        eps = targets.label_smoothing
        a, b, g_xy, g_dot = loss_gradient_coefficients(targets.valid, targets.row_weight,
                                                       eps.to(acc) if isinstance(eps, Tensor) else eps,
                                                       targets.smoothing, targets.target, z_loss, scale, acc)
        grad = row_statistics_gradient(logits, targets.target, lse, vector, matrix,
                                       a if b is None else torch.addcmul(a, b, lse), g_xy,
                                       g_dot if targets.smoothing is not None else None)
        if softcap is not None:  # d(c tanh(x / c))/dx = 1 - tanh^2
            grad.mul_(1 - (logits / softcap).square())
        if input.dim() > 2:
            grad = grad.view(input.shape[0], *input.shape[2:], num_classes).movedim(-1, 1)
    return loss, grad.to(input.dtype)


def _soft_target_rows(input: Tensor, target: Tensor, weight: Tensor | None,
                      label_smoothing: float | Tensor, distribution: Distribution, z_loss: float,
                      softcap: float | None, checks: ContentChecks | None, acc: torch.dtype):
    """Per-row (loss, nll, smooth) for probability targets q: ``q' = (1 - eps) q + eps q @ U``."""
    if target.shape != input.shape:
        raise ValueError(f"target as probabilities must have the shape of input {tuple(input.shape)}, "
                         f"got shape {tuple(target.shape)}")
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
    return loss, nll, smooth


# 3. Binary / multi-label ----------------------------------------------------------------------------


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor, label_smoothing: float | Tensor = 0.0,
                                     *, weight: Tensor | None = None, pos_weight: Tensor | None = None,
                                     reduction: str = "mean") -> Tensor:
    r"""Binary / multi-label cross-entropy on logits with smoothed targets ``y (1 - eps) + eps / 2``.

    This is Keras' convention: each binary label is pulled towards 1/2 (a uniform prior over the
    two outcomes of *that* label). The alternative, ``y (1 - eps) + eps / K`` over K labels, treats
    the labels as one categorical distribution, which multi-label targets are not.

    Args:
        input: logits of any shape.
        target: 0/1 (or probability) targets of ``input``'s shape.
        label_smoothing: eps at most 1, a float or a tensor broadcastable to ``target``.
        weight, pos_weight, reduction: as in :func:`torch.nn.functional.binary_cross_entropy_with_logits`.

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
    checks = ContentChecks()
    if isinstance(label_smoothing, Tensor) and label_smoothing.dim():
        try:
            torch.broadcast_shapes(label_smoothing.shape, target.shape)
        except RuntimeError:
            raise ValueError(f"label_smoothing must broadcast to target's shape {tuple(target.shape)}, "
                             f"got shape {tuple(label_smoothing.shape)}") from None
        eps = check_label_smoothing(label_smoothing, label_smoothing.shape, checks)
    else:
        eps = check_label_smoothing(label_smoothing, torch.Size(), checks)
    checks.raise_if_failed()
    smoothed = target.to(input.dtype) * (1 - eps) + eps / 2
    return F.binary_cross_entropy_with_logits(input, smoothed, weight=weight, pos_weight=pos_weight,
                                              reduction=reduction)


# 4. Modules: they hold arguments and call the functionals --------------------------------------------


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
                 pos_weight: Tensor | None = None, reduction: str = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        if not isinstance(label_smoothing, Tensor):
            check_label_smoothing(label_smoothing, torch.Size(), None)
        self.label_smoothing, self.reduction = label_smoothing, reduction
        _register_optional(self, "weight", weight)
        _register_optional(self, "pos_weight", pos_weight)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return binary_cross_entropy_with_logits(input, target, self.label_smoothing, weight=self.weight,
                                                pos_weight=self.pos_weight, reduction=self.reduction)
