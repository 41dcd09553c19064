"""Fused Triton label-smoothed cross-entropy: the ``impl="triton"`` row-statistics provider.

:func:`labelsmooth.cross_entropy` reduces every loss to three statistics per row of logits x
(see :mod:`labelsmooth.engine`), with ``v = w * u`` for a shared smoothing distribution or
``v = w * U[y]`` for a class-conditional one::

    lse = log sum_c exp(x_c),    x_y = x[y],    dot = sum_c v_c x_c

:func:`row_statistics` computes them reading each row once (an online log-sum-exp: a running
maximum m and a running sum of exp(x - m), rescaled whenever m grows), all in fp32 (fp64 for fp64
logits), and keeps ``lse`` for backward. Softcap ``x -> softcap * tanh(x / softcap)`` is applied
on the fly, so ``x_y`` and ``dot`` refer to the capped logits. Weights, eps, masks, reductions,
the non-target correction and z-loss stay in torch on (M,) vectors.

Gradient. For upstream gradients (g_lse, g_xy, g_dot) of the three statistics, since
``d lse / d x_k = softmax_k = exp(x_k - lse)``, ``d x_y / d x_k = [k == y]`` and
``d dot / d x_k = v_k``::

    dL/dx_k = (g_lse exp(x_k - lse) + g_xy [k == y] + g_dot v_k) * (1 - tanh^2(raw_k / softcap))

(the last factor only with softcap), one pass that reads the row and writes the gradient, into a
new buffer or, with ``inplace_backward=True``, into the logits' own storage.

Single backward (:func:`fused_cross_entropy_with_grad`). Forward and backward above read the
logits twice from memory. For the standard loss the upstream gradients are known before the
kernel runs, up to the one scalar (or per-row vector) that arrives in backward: per row, with
``s = valid / denominator`` for mean (``valid`` for sum and none), class weight ``w_y``, row mass
``m_y = sum_c v_c`` and ``c_y = w_y / (K - 1)`` for ``non_target`` (else 0)::

    g_lse = s ((1 - eps) w_y + eps (m_y - c_y)) + 2 z_loss s lse
    g_xy  = -s ((1 - eps) w_y - eps c_y)
    g_dot = -s eps

(the derivative of ``combine_row_statistics`` and the reduction). One kernel then computes the
statistics and writes the gradient of the loss in a second pass over the same row, just read
and so mostly still in L2 cache (a 128k-class bf16 row is 256 KB), so the logits come from
memory about once. Backward only multiplies by the incoming gradient, in place, and skips every
row whose factor is exactly 1 (tested on the device: no host sync). This is exact for any
upstream gradient of the returned loss (for fp16/bf16 logits a factor other than 1 rounds twice),
but the stored gradient is used up: the loss may be backpropagated once.

Layout: 1. constants, 2. kernels, 3. host functions, 4. autograd Functions, 5. entry points.
Offsets are int64 (``row * stride``), so N x K above 2^31 elements is fine.

Without a GPU. The kernels take CUDA tensors. On a machine without one they can still run, on
CPU tensors and slowly, through Triton's interpreter (this is how they are tested). Triton decides
when it is first imported, so switch the interpreter on in the environment before the process
imports ``labelsmooth`` or ``triton``::

    TRITON_INTERPRET=1 python train.py

(or ``os.environ["TRITON_INTERPRET"] = "1"`` at the very top of the script). labelsmooth itself
never changes the environment; without the interpreter, a CPU tensor given to ``impl="triton"``
raises a ``ValueError`` that says this.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..engine import (accumulation_dtype, check_class_index_call, class_target_loss, loss_gradient_coefficients,
                      prepare_class_targets, single_backward, to_rows)
from ..targets import Distribution, Smoothing
from .utils import check_kernel_device, row_block_size, row_num_warps, triton_dtype

__all__ = ["fused_cross_entropy_with_grad", "row_statistics"]

# 1. Constants ------------------------------------------------------------------------------------

# Passed for an absent softcap: the kernels never read it then (HAS_SOFTCAP is False).
_NO_SOFTCAP = 1.0


# 2. Kernels --------------------------------------------------------------------------------------


@triton.jit
def _tanh(u):
    """tanh with one exp, finite for every u: sign(u) (1 - e) / (1 + e), e = exp(-2 |u|)."""
    e = tl.exp(-2.0 * tl.abs(u))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(u < 0, -t, t)


@triton.jit
def _row_target(target_ptr, row, smoothing_ptr, num_classes, CLASS_CONDITIONAL: tl.constexpr):
    """Target column of a row (-1 when out of range), its smoothing weights v and how many to read.

    An out-of-range target (possible with validate_args=False) reads nothing: x_y = dot = 0 for
    that row, and no gradient column is its one-hot column.
    """
    y = tl.load(target_ptr + row)
    y_in_range = (y >= 0) & (y < num_classes)
    v_ptr = smoothing_ptr
    if CLASS_CONDITIONAL:
        v_ptr = smoothing_ptr + tl.where(y_in_range, y, 0) * num_classes  # row y of V, int64 offset
    return tl.where(y_in_range, y, -1), v_ptr, tl.where(y_in_range, num_classes, 0)


@triton.jit
def _row_statistics(row_ptr, v_ptr, v_columns, y, num_classes, softcap,
                    HAS_SMOOTHING: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                    BLOCK: tl.constexpr, ACC: tl.constexpr):
    """(lse, x_y, dot) of one row of logits, reading it once in blocks of BLOCK columns."""
    # 1. the target logit: one masked scalar load
    x_y = tl.load(row_ptr + tl.maximum(y, 0), mask=y >= 0, other=0.0).to(ACC)
    if HAS_SOFTCAP:
        x_y = softcap * _tanh(x_y / softcap)
    m = tl.full((), float("-inf"), ACC)
    s = tl.zeros((), ACC)
    dot = tl.zeros((), ACC)
    for start in range(0, num_classes, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        in_row = cols < num_classes
        x = tl.load(row_ptr + cols, mask=in_row, other=0.0).to(ACC)
        if HAS_SOFTCAP:
            x = softcap * _tanh(x / softcap)
        # 2. online log-sum-exp: s = sum exp(x - m) so far; rescale it when the maximum m grows.
        #    While the row is all -inf, shift by 0 (exp(-inf - -inf) would be nan) and keep s = 0.
        x_for_max = tl.where(in_row, x, float("-inf"))
        m_new = tl.maximum(m, tl.max(x_for_max, 0))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - shift) + tl.sum(tl.exp(x_for_max - shift), 0)
        m = m_new
        # 3. the smoothing dot product sum_c v_c x_c (padding columns hold x = 0, v = 0)
        if HAS_SMOOTHING:
            v = tl.load(v_ptr + cols, mask=cols < v_columns, other=0.0).to(ACC)
            dot += tl.sum(v * x, 0)
    lse = m + tl.log(s)
    return lse, x_y, dot


@triton.jit
def _write_row_gradient(row_ptr, grad_row_ptr, v_ptr, v_columns, y, num_classes, softcap,
                        lse, g_lse, g_xy, g_dot,
                        HAS_SMOOTHING: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                        BLOCK: tl.constexpr, ACC: tl.constexpr):
    """grad_k = (g_lse exp(x_k - lse) + g_xy [k == y] + g_dot v_k) (1 - tanh^2), one pass.

    Each block is read before it is written, so grad_row_ptr may be row_ptr (in place).
    """
    for start in range(0, num_classes, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        in_row = cols < num_classes
        x = tl.load(row_ptr + cols, mask=in_row, other=0.0).to(ACC)
        if HAS_SOFTCAP:
            t = _tanh(x / softcap)
            x = softcap * t
        grad = g_lse * tl.exp(x - lse)
        if HAS_SMOOTHING:
            v = tl.load(v_ptr + cols, mask=cols < v_columns, other=0.0).to(ACC)
            grad += g_dot * v
        grad = tl.where(cols == y, grad + g_xy, grad)
        if HAS_SOFTCAP:
            grad = grad * (1.0 - t * t)
        tl.store(grad_row_ptr + cols, grad.to(grad_row_ptr.dtype.element_ty), mask=in_row)


@triton.jit
def _forward_kernel(logits_ptr, logits_row_stride, target_ptr, smoothing_ptr,
                    lse_ptr, target_logit_ptr, dot_ptr, num_classes, softcap,
                    HAS_SMOOTHING: tl.constexpr, CLASS_CONDITIONAL: tl.constexpr,
                    HAS_SOFTCAP: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """One program per row: (lse, x_y, dot) into three (M,) vectors."""
    row = tl.program_id(0).to(tl.int64)
    y, v_ptr, v_columns = _row_target(target_ptr, row, smoothing_ptr, num_classes, CLASS_CONDITIONAL)
    lse, x_y, dot = _row_statistics(logits_ptr + row * logits_row_stride, v_ptr, v_columns, y,
                                    num_classes, softcap, HAS_SMOOTHING, HAS_SOFTCAP, BLOCK, ACC)
    tl.store(lse_ptr + row, lse)
    tl.store(target_logit_ptr + row, x_y)
    tl.store(dot_ptr + row, dot)


@triton.jit
def _backward_kernel(logits_ptr, logits_row_stride, grad_ptr, grad_row_stride, target_ptr,
                     smoothing_ptr, lse_ptr, g_lse_ptr, g_xy_ptr, g_dot_ptr, num_classes, softcap,
                     HAS_SMOOTHING: tl.constexpr, CLASS_CONDITIONAL: tl.constexpr,
                     HAS_SOFTCAP: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """One program per row: the gradient for upstream gradients given per row."""
    row = tl.program_id(0).to(tl.int64)
    y, v_ptr, v_columns = _row_target(target_ptr, row, smoothing_ptr, num_classes, CLASS_CONDITIONAL)
    _write_row_gradient(logits_ptr + row * logits_row_stride, grad_ptr + row * grad_row_stride,
                        v_ptr, v_columns, y, num_classes, softcap, tl.load(lse_ptr + row),
                        tl.load(g_lse_ptr + row).to(ACC), tl.load(g_xy_ptr + row).to(ACC),
                        tl.load(g_dot_ptr + row).to(ACC), HAS_SMOOTHING, HAS_SOFTCAP, BLOCK, ACC)


@triton.jit
def _forward_with_grad_kernel(logits_ptr, logits_row_stride, grad_ptr, grad_row_stride, target_ptr,
                              smoothing_ptr, lse_ptr, target_logit_ptr, dot_ptr,
                              g_lse_ptr, g_lse_per_lse_ptr, g_xy_ptr, g_dot_ptr, num_classes, softcap,
                              HAS_SMOOTHING: tl.constexpr, CLASS_CONDITIONAL: tl.constexpr,
                              HAS_SOFTCAP: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """One program per row: the statistics, then the gradient for g_lse = a + b lse (z-loss)."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * logits_row_stride
    y, v_ptr, v_columns = _row_target(target_ptr, row, smoothing_ptr, num_classes, CLASS_CONDITIONAL)
    lse, x_y, dot = _row_statistics(row_ptr, v_ptr, v_columns, y, num_classes, softcap,
                                    HAS_SMOOTHING, HAS_SOFTCAP, BLOCK, ACC)
    tl.store(lse_ptr + row, lse)
    tl.store(target_logit_ptr + row, x_y)
    tl.store(dot_ptr + row, dot)
    g_lse = tl.load(g_lse_ptr + row) + tl.load(g_lse_per_lse_ptr + row) * lse
    _write_row_gradient(row_ptr, grad_ptr + row * grad_row_stride, v_ptr, v_columns, y,
                        num_classes, softcap, lse, g_lse, tl.load(g_xy_ptr + row),
                        tl.load(g_dot_ptr + row), HAS_SMOOTHING, HAS_SOFTCAP, BLOCK, ACC)


@triton.jit
def _scale_rows_kernel(grad_ptr, grad_row_stride, scale_ptr, scale_stride, num_classes,
                       BLOCK: tl.constexpr, ACC: tl.constexpr):
    """grad[row] *= scale[row * scale_stride] in place; a row whose factor is 1 is not touched."""
    row = tl.program_id(0).to(tl.int64)
    scale = tl.load(scale_ptr + row * scale_stride).to(ACC)
    if scale != 1.0:
        grad_row_ptr = grad_ptr + row * grad_row_stride
        for start in range(0, num_classes, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            in_row = cols < num_classes
            grad = tl.load(grad_row_ptr + cols, mask=in_row, other=0.0).to(ACC)
            tl.store(grad_row_ptr + cols, (grad * scale).to(grad_row_ptr.dtype.element_ty), mask=in_row)


# 3. Host functions -------------------------------------------------------------------------------


def _launch_options(logits: Tensor, smoothing: Tensor | None, class_conditional: bool,
                    softcap: float | None) -> dict:
    """Compile-time flags and launch sizes shared by the row kernels."""
    block = row_block_size(logits.shape[1])
    return dict(HAS_SMOOTHING=smoothing is not None, CLASS_CONDITIONAL=class_conditional,
                HAS_SOFTCAP=softcap is not None, BLOCK=block,
                ACC=triton_dtype(accumulation_dtype(logits.dtype)), num_warps=row_num_warps(block))


def _smoothing_operand(smoothing: Smoothing | None) -> tuple[Tensor | None, bool]:
    """The tensor the kernels read v from, and whether it is a (K, K) table indexed by y."""
    if smoothing is None:
        return None, False
    if smoothing.matrix is not None:
        return smoothing.matrix.contiguous(), True
    return smoothing.vector.contiguous(), False


def _statistics_buffers(logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    acc = accumulation_dtype(logits.dtype)
    return tuple(torch.empty(logits.shape[0], dtype=acc, device=logits.device) for _ in range(3))


def _launch_forward(logits: Tensor, target: Tensor, smoothing: Tensor | None, class_conditional: bool,
                    softcap: float | None) -> tuple[Tensor, Tensor, Tensor]:
    """(lse, x_y, dot) for (M, K) logits with unit column stride; no host sync."""
    lse, target_logit, dot = _statistics_buffers(logits)
    if logits.shape[0]:
        _forward_kernel[(logits.shape[0],)](
            logits, logits.stride(0), target, lse if smoothing is None else smoothing,
            lse, target_logit, dot, logits.shape[1], _NO_SOFTCAP if softcap is None else softcap,
            **_launch_options(logits, smoothing, class_conditional, softcap))
    return lse, target_logit, dot


def _launch_backward(logits: Tensor, grad: Tensor, target: Tensor, smoothing: Tensor | None,
                     class_conditional: bool, softcap: float | None, lse: Tensor,
                     upstream: tuple[Tensor, Tensor, Tensor]) -> None:
    """Write the gradient for upstream (g_lse, g_xy, g_dot) into ``grad`` (may be ``logits``)."""
    g_lse, g_xy, g_dot = (g.to(lse.dtype).contiguous() for g in upstream)
    if logits.shape[0]:
        _backward_kernel[(logits.shape[0],)](
            logits, logits.stride(0), grad, grad.stride(0), target,
            lse if smoothing is None else smoothing, lse, g_lse, g_xy, g_dot, logits.shape[1],
            _NO_SOFTCAP if softcap is None else softcap,
            **_launch_options(logits, smoothing, class_conditional, softcap))


def _launch_forward_with_grad(logits: Tensor, grad: Tensor, target: Tensor, smoothing: Tensor | None,
                              class_conditional: bool, softcap: float | None,
                              coefficients: tuple[Tensor, Tensor, Tensor, Tensor]
                              ) -> tuple[Tensor, Tensor, Tensor]:
    """(lse, x_y, dot), and the gradient for g_lse = a + b lse, g_xy, g_dot written into ``grad``."""
    lse, target_logit, dot = _statistics_buffers(logits)
    if logits.shape[0]:
        _forward_with_grad_kernel[(logits.shape[0],)](
            logits, logits.stride(0), grad, grad.stride(0), target,
            lse if smoothing is None else smoothing, lse, target_logit, dot, *coefficients,
            logits.shape[1], _NO_SOFTCAP if softcap is None else softcap,
            **_launch_options(logits, smoothing, class_conditional, softcap))
    return lse, target_logit, dot


def _launch_scale_rows(grad: Tensor, scale: Tensor) -> None:
    """grad (M, K) *= scale, a 0-dim tensor or one factor per row; rows with factor 1 are skipped."""
    scale = scale.to(accumulation_dtype(grad.dtype)).reshape(-1).contiguous()
    if grad.shape[0]:
        block = row_block_size(grad.shape[1])
        _scale_rows_kernel[(grad.shape[0],)](
            grad, grad.stride(0), scale, 0 if scale.numel() == 1 else 1, grad.shape[1],
            BLOCK=block, ACC=triton_dtype(scale.dtype), num_warps=row_num_warps(block))


def _unit_column_stride(logits: Tensor) -> Tensor:
    return logits if logits.stride(1) == 1 else logits.contiguous()


# 4. Autograd Functions ---------------------------------------------------------------------------


class _RowStatistics(torch.autograd.Function):
    """(lse, x_y, dot) of (M, K) logits; backward writes dL/dx with one read of the logits."""

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, smoothing: Tensor | None, class_conditional: bool,
                softcap: float | None, inplace_backward: bool):
        lse, target_logit, dot = _launch_forward(logits, target, smoothing, class_conditional, softcap)
        ctx.save_for_backward(logits, target, smoothing, lse)
        ctx.class_conditional, ctx.softcap, ctx.inplace_backward = class_conditional, softcap, inplace_backward
        return lse, target_logit, dot

    @staticmethod
    @single_backward("The Triton cross-entropy")
    def backward(ctx, grad_lse: Tensor, grad_target_logit: Tensor, grad_dot: Tensor):
        logits, target, smoothing, lse = ctx.saved_tensors
        grad = logits if ctx.inplace_backward else torch.empty_like(logits)
        _launch_backward(logits, grad, target, smoothing, ctx.class_conditional, ctx.softcap, lse,
                         (grad_lse, grad_target_logit, grad_dot))
        return grad, None, None, None, None, None


class _LossWithPrecomputedGradient(torch.autograd.Function):
    """Passes a loss through; backward scales the gradient computed with it in forward, in place."""

    @staticmethod
    def forward(ctx, input: Tensor, loss: Tensor, grad_rows: Tensor):
        ctx.save_for_backward(grad_rows)
        ctx.input_shape = input.shape
        return loss.clone()

    @staticmethod
    @single_backward("fused_cross_entropy_with_grad")
    def backward(ctx, grad_loss: Tensor):
        (grad_rows,) = ctx.saved_tensors
        _launch_scale_rows(grad_rows, grad_loss)
        return _from_rows(grad_rows, ctx.input_shape), None, None


def _from_rows(rows: Tensor, shape: torch.Size) -> Tensor:
    """Inverse of ``to_rows``: (M, K) -> (N, K, d1, ...), a view."""
    if len(shape) == 2:
        return rows
    return rows.reshape(shape[:1] + shape[2:] + shape[1:2]).movedim(-1, 1)


# 5. Entry points ---------------------------------------------------------------------------------


def row_statistics(logits: Tensor, target: Tensor, smoothing: Smoothing | None,
                   softcap: float | None, inplace_backward: bool = False,
                   predictions: bool = False) -> tuple[Tensor, ...]:
    """The Triton row-statistics provider: ``(lse, x_y, dot)`` per row, differentiable in logits.

    Same contract as :func:`labelsmooth.engine.torch_row_statistics`: ``logits`` (M, K) on CUDA
    (or on CPU under ``TRITON_INTERPRET=1``), ``target`` (M,) int64 class indices in range,
    ``smoothing`` the resolved distribution (``None`` when no smoothing term is needed), and
    ``dot = sum_c v_c x_c`` with ``v = smoothing.vector`` or ``smoothing.matrix[y]``. Outputs are
    fp32 (M,) (fp64 for fp64 logits). With ``inplace_backward=True`` backward writes the gradient
    into the logits' storage: the caller's logits are overwritten (saves one (M, K) buffer).
    With ``predictions``, a fourth output: each row's arg-max (int64), for the accuracy of
    ``return_parts``; it is a separate ``argmax`` over the logits (the kernel does not track it).

    Example:
        >>> import torch
        >>> from labelsmooth.ops.cross_entropy import row_statistics
        >>> device = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: Triton's interpreter
        >>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]], device=device)
        >>> lse, x_y, dot = row_statistics(logits, torch.tensor([0, 2], device=device), None, None)
        >>> torch.allclose(lse, logits.logsumexp(1)), x_y.tolist()
        (True, [2.0, 0.0])
    """
    check_kernel_device(logits, "logits")
    smoothing_tensor, class_conditional = _smoothing_operand(smoothing)
    statistics = _RowStatistics.apply(_unit_column_stride(logits), target.long().contiguous(), smoothing_tensor,
                                      class_conditional, softcap, inplace_backward)
    return (*statistics, logits.detach().argmax(1)) if predictions else statistics


def fused_cross_entropy_with_grad(input: Tensor, target: Tensor, weight: Tensor | None = None,
                                  ignore_index: int = -100, reduction: str = "mean",
                                  label_smoothing: float | Tensor = 0.0, *,
                                  distribution: Distribution = "uniform", z_loss: float = 0.0,
                                  softcap: float | None = None, inplace_backward: bool = False,
                                  validate_args: bool = True) -> Tensor:
    r"""Label-smoothed cross-entropy that computes its gradient during forward (backpropagate once).

    The same loss as :func:`labelsmooth.cross_entropy` with class-index targets (every weight,
    ignore_index, reduction, per-sample or negative eps, distribution, z-loss and softcap), from
    one kernel that reads each row of logits once from memory and writes ``dL/dx`` for an
    upstream gradient of 1; backward multiplies by the actual upstream gradient in place (rows
    whose factor is exactly 1 are skipped on the device). So the result may be backpropagated
    **once**: a second backward (``retain_graph=True``) would scale the stored gradient again.

    With ``inplace_backward=True`` the gradient is written into the logits' storage *during
    forward* (2-D logits with unit column stride): the caller's logits hold the gradient as soon
    as this returns, and no (N, K) buffer is allocated. Without it, one (N, K) gradient buffer
    lives from forward to backward. When ``input`` does not require grad (or under
    ``torch.no_grad()``) no gradient is computed and nothing is overwritten.

    Args: as :func:`labelsmooth.cross_entropy`; ``input`` (N, K) or (N, K, d1, ...), ``target``
    class indices (N,) or (N, d1, ...). Returns the loss only (no ``return_parts``).

    Example:
        >>> import torch, labelsmooth
        >>> from labelsmooth.ops.cross_entropy import fused_cross_entropy_with_grad
        >>> device = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: Triton's interpreter
        >>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]], device=device, requires_grad=True)
        >>> target = torch.tensor([0, 2], device=device)
        >>> loss = fused_cross_entropy_with_grad(logits, target, label_smoothing=0.1)
        >>> loss.backward()
        >>> reference = logits.detach().requires_grad_()
        >>> torch.nn.functional.cross_entropy(reference, target, label_smoothing=0.1).backward()
        >>> round(loss.item(), 4), torch.allclose(logits.grad, reference.grad)
        (0.9547, True)
    """
    check_class_index_call("fused_cross_entropy_with_grad", input, target, weight, reduction, softcap, z_loss)
    num_classes = input.shape[1]
    check_kernel_device(input, "input")
    acc = accumulation_dtype(input.dtype)

    # 1. per-row masks, weights and the mean's denominator, as in labelsmooth.cross_entropy
    targets = prepare_class_targets(target, num_classes, ignore_index=ignore_index,
                                    label_smoothing=label_smoothing, distribution=distribution, weight=weight,
                                    dtype=acc, device=input.device, validate_args=validate_args,
                                    return_parts=False, reduction=reduction)

    # 2. statistics, and the gradient when one is wanted, in one kernel
    rows = _unit_column_stride(to_rows(input.detach(), num_classes))
    smoothing_tensor, class_conditional = _smoothing_operand(targets.smoothing)
    wants_grad = input.requires_grad and torch.is_grad_enabled()
    if wants_grad:
        grad_rows = rows if inplace_backward else torch.empty_like(rows)
        a, b, g_xy, g_dot = loss_gradient_coefficients(targets, z_loss=z_loss, reduction=reduction, dtype=acc)
        coefficients = tuple(c.contiguous() for c in torch.broadcast_tensors(
            a, torch.zeros_like(a) if b is None else b, g_xy, g_dot))
        lse, target_logit, dot = _launch_forward_with_grad(rows, grad_rows, targets.target, smoothing_tensor,
                                                           class_conditional, softcap, coefficients)
    else:
        lse, target_logit, dot = _launch_forward(rows, targets.target, smoothing_tensor, class_conditional,
                                                 softcap)

    # 3. the loss from the statistics, exactly as labelsmooth.cross_entropy forms it
    loss = class_target_loss(lse, target_logit, dot, targets, weight=weight, z_loss=z_loss,
                             reduction=reduction, dtype=input.dtype, return_parts=False)
    if not wants_grad:
        return loss
    return _LossWithPrecomputedGradient.apply(input, loss, grad_rows)
