"""Fused Triton label-smoothed cross-entropy: the ``impl="triton"`` row-statistics provider.

:func:`labelsmooth.cross_entropy` reduces every loss to three statistics per row of logits x
(see :mod:`labelsmooth.engine`), with ``v = w * u`` for a shared smoothing distribution or
``v = w * U[y]`` for a class-conditional one::

    lse = log sum_c exp(x_c),    x_y = x[y],    dot = sum_c v_c x_c

The kernels compute them in fp32 (fp64 for fp64 logits), with softcap
``x -> softcap * tanh(x / softcap)`` applied on the fly, and the gradient for upstream gradients
(g_lse, g_xy, g_dot) of the three statistics::

    dL/dx_k = (g_lse exp(x_k - lse) + g_xy [k == y] + g_dot v_k) * (1 - tanh^2(raw_k / softcap))

(the last factor only with softcap). How a row is walked (:func:`labelsmooth.ops.utils.row_launch`):
a row of up to 16k classes (fp32 statistics) is *resident*: loaded once into registers, its statistics and its
gradient computed there, one read and one write; a wider row is streamed in blocks with an online
log-sum-exp (a running maximum m and sum of exp(x - m), rescaled when m grows), and read a second
time for the gradient (mostly from L2). Smoothing ``"uniform"`` / ``"non_target"`` without class
weights gives every v_c one value, so ``dot = v * sum_c x_c`` and no vector is read (the *scalar*
path); a prior or class weights read the (K,) vector, a (K, K) table its row y. For the token
accuracy of ``return_parts`` the statistics pass also takes each row's arg-max of the capped
logits from the same reduction as the row maximum (first index on ties; across streamed blocks a
later block wins only when strictly larger).

Single backward (:func:`fused_cross_entropy_with_grad`). For the standard loss the upstream
gradients are known before the kernel runs, up to the one scalar (or per-row vector) that arrives
in backward: per row, with ``s = valid / denominator`` for mean (``valid`` for sum and none),
class weight ``w_y``, row mass ``m_y = sum_c v_c`` and ``c_y = w_y / (K - 1)`` for ``non_target``
(else 0)::

    g_lse = s ((1 - eps) w_y + eps (m_y - c_y)) + 2 z_loss s lse
    g_xy  = -s ((1 - eps) w_y - eps c_y)
    g_dot = -s eps

(``engine.loss_gradient_coefficients``). One kernel computes the statistics and writes the
gradient of the loss; ignored rows are written as zeros without reading their logits. Backward
only multiplies by the incoming gradient, in place, skipping every row whose factor is exactly 1
(tested on the device: no host sync). The stored gradient is used up: backpropagate once.

In place. ``inplace_backward=True`` writes the gradient into the logits' storage, and the
logits' autograd version counter is bumped, so an operation that saved them for its own backward
(``exp``, a second loss term) raises torch's in-place error instead of computing with the
gradient. Where writing in place cannot be right the gradient goes to a new buffer instead: a leaf
tensor (or a view of one: its ``.grad`` would alias its data) and rows that share memory
(expanded, stride 0).

Compilation and graphs. The launches are ``torch.library`` custom operators
(``labelsmooth::row_statistics`` and friends, with fake implementations), so
``torch.compile(fullgraph=True)`` traces ``impl="triton"``; in eager mode the same functions are
called directly (no dispatcher overhead). Under compilation in-place backward falls back to a
new buffer. Nothing here synchronises with the host; with ``validate_args=False`` the whole loss
can be captured in a CUDA graph. Every launch runs with the logits' device made current.

Layout: the kernels and their launchers (constants, kernels, host functions, in that order) are in
:mod:`labelsmooth.ops.cross_entropy_kernels`; here are 1. the autograd Functions and 2. the entry
points.

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
from torch import Tensor

from ..engine import (
    accumulation_dtype,
    check_class_index_call,
    class_target_loss,
    loss_gradient_coefficients,
    prepare_class_targets,
    single_backward,
    to_rows,
    writable_in_place,
)
from ..targets import Distribution, Smoothing
from . import cross_entropy_kernels as kernels
from .utils import check_kernel_device

__all__ = ["fused_cross_entropy_with_grad", "row_statistics"]


# 1. Autograd Functions ---------------------------------------------------------------------------


class _RowStatistics(torch.autograd.Function):
    """(lse, x_y, dot) of (M, K) logits (and with ``predictions`` each row's arg-max, int64, from
    the same read); backward writes dL/dx with one read of the logits."""

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, smoothing: Tensor | None, mode: int, scalar: float,
                softcap: float | None, inplace_backward: bool, predictions: bool):
        lse, target_logit, dot, prediction = kernels.statistics(logits, target, smoothing, mode, scalar, softcap,
                                                                predictions)
        ctx.save_for_backward(logits, target, smoothing, lse)
        ctx.options = (mode, scalar, softcap)
        # a traced graph gets a new buffer: AOTAutograd does not keep a backward write into a forward input
        ctx.inplace_backward = inplace_backward and not torch.compiler.is_compiling()
        if not predictions:
            return lse, target_logit, dot
        ctx.mark_non_differentiable(prediction)
        return lse, target_logit, dot, prediction

    @staticmethod
    @single_backward("The Triton cross-entropy")
    def backward(ctx, grad_lse: Tensor, grad_target_logit: Tensor, grad_dot: Tensor, *unused):
        logits, target, smoothing, lse = ctx.saved_tensors
        arguments = (target, smoothing, *ctx.options, lse, grad_lse, grad_target_logit, grad_dot)
        if ctx.inplace_backward:
            kernels.gradient_(logits, *arguments)
            torch.autograd.graph.increment_version(logits)  # whoever saved the logits now raises
            grad = logits
        else:
            grad = kernels.gradient(logits, *arguments)
        return grad, None, None, None, None, None, None, None


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
        kernels.scale_rows_(grad_rows, grad_loss)
        torch.autograd.graph.increment_version(grad_rows)
        return _from_rows(grad_rows, ctx.input_shape), None, None


def _unit_column_stride(logits: Tensor) -> Tensor:
    return logits if logits.stride(1) == 1 else logits.contiguous()


def _from_rows(rows: Tensor, shape: torch.Size) -> Tensor:
    """Inverse of ``to_rows``: (M, K) -> (N, K, d1, ...), a view."""
    if len(shape) == 2:
        return rows
    return rows.reshape(shape[:1] + shape[2:] + shape[1:2]).movedim(-1, 1)


# 2. Entry points ---------------------------------------------------------------------------------


def row_statistics(logits: Tensor, target: Tensor, smoothing: Smoothing | None,
                   softcap: float | None, inplace_backward: bool = False,
                   predictions: bool = False) -> tuple[Tensor, ...]:
    """The Triton row-statistics provider: ``(lse, x_y, dot)`` per row, differentiable in logits.

    Same contract as :func:`labelsmooth.engine.torch_row_statistics`: ``logits`` (M, K) on CUDA
    (or on CPU under ``TRITON_INTERPRET=1``), ``target`` (M,) integer class indices in range,
    ``smoothing`` the resolved distribution (``None`` when no smoothing term is needed), and
    ``dot = sum_c v_c x_c`` with ``v = smoothing.vector`` or ``smoothing.matrix[y]``. Outputs are
    fp32 (M,) (fp64 for fp64 logits). With ``inplace_backward=True`` backward writes the gradient
    into the logits' storage (saves one (M, K) buffer) and bumps their version counter; for a
    leaf tensor, a view of one, or rows that share memory it uses a new buffer instead.
    With ``predictions``, a fourth output: each row's arg-max of the (capped, fp32) logits (int64;
    the first index wins ties), for the accuracy of ``return_parts``, from the same read.

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
    operand = kernels.smoothing_operand(smoothing, accumulation_dtype(logits.dtype))
    rows = _unit_column_stride(logits)
    inplace = inplace_backward and writable_in_place(rows, rows)
    return _RowStatistics.apply(rows, target.contiguous(), operand.tensor, operand.mode, operand.scalar, softcap,
                                inplace, predictions)


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
    upstream gradient of 1 (ignored rows: zeros, their logits unread); backward multiplies by the
    actual upstream gradient in place (rows whose factor is exactly 1 are skipped on the device).
    So the result may be backpropagated **once**: a second backward (``retain_graph=True``) would
    scale the stored gradient again.

    With ``inplace_backward=True`` the gradient is written into the logits' storage *during
    forward* (2-D logits with unit column stride): the caller's logits hold the gradient as soon
    as this returns, their version counter is bumped (an operation that saved them raises
    torch's in-place error in backward), and no (N, K) buffer is allocated. A leaf tensor, a view
    of one, or rows that share memory get a new buffer instead. Without it, one (N, K) gradient
    buffer lives from forward to backward. When ``input`` does not require grad (or under
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
    operand = kernels.smoothing_operand(targets.smoothing, acc)
    wants_grad = input.requires_grad and torch.is_grad_enabled()
    if wants_grad:
        a, b, g_xy, g_dot = loss_gradient_coefficients(targets, z_loss=z_loss, reduction=reduction, dtype=acc)
        arguments = (target.reshape(-1).contiguous(), ignore_index, operand.tensor, operand.mode, operand.scalar,
                     softcap, a, b, g_xy, g_dot)
        if inplace_backward and writable_in_place(input, rows) and not torch.compiler.is_compiling():
            lse, target_logit, dot = kernels.statistics_and_gradient_(rows, *arguments)
            torch.autograd.graph.increment_version(rows)  # whoever saved the logits now raises
            grad_rows = rows
        else:
            lse, target_logit, dot, grad_rows = kernels.statistics_and_gradient(rows, *arguments)
    else:
        lse, target_logit, dot, _ = kernels.statistics(rows, targets.target, operand.tensor, operand.mode,
                                                       operand.scalar, softcap, False)

    # 3. the loss from the statistics, exactly as labelsmooth.cross_entropy forms it
    loss = class_target_loss(lse, target_logit, dot, targets, weight=weight, z_loss=z_loss,
                             reduction=reduction, dtype=input.dtype, return_parts=False)
    if not wants_grad:
        return loss
    return _LossWithPrecomputedGradient.apply(input, loss, grad_rows)
