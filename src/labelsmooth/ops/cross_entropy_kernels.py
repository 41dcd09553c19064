"""The Triton kernels of :mod:`labelsmooth.ops.cross_entropy` and their launchers.

What the kernels compute (the row statistics ``(lse, x_y, dot)``, their gradient, and the loss's
gradient from per-row coefficients) is derived in :mod:`labelsmooth.ops.cross_entropy`, whose
autograd Functions and entry points call the launchers here. Each launcher is a ``torch.library``
custom operator (``labelsmooth::row_statistics`` and friends, with a fake implementation for
tracing), called directly in eager mode; every launch runs with its tensor's device made current.
Offsets are int64 (``row * stride``), so N x K above 2^31 elements is fine; column indices and
target compares are int32.

Layout: 1. constants, 2. kernels, 3. host functions (launchers and their custom operators).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..engine import accumulation_dtype
from ..targets import Smoothing
from .utils import device_guard, row_launch, triton_dtype

__all__ = [
    "MATRIX_SMOOTHING",
    "NO_SMOOTHING",
    "SCALAR_SMOOTHING",
    "VECTOR_SMOOTHING",
    "SmoothingOperand",
    "gradient",
    "gradient_",
    "scale_rows_",
    "smoothing_operand",
    "statistics",
    "statistics_and_gradient",
    "statistics_and_gradient_",
]

# 1. Constants ------------------------------------------------------------------------------------

# How the kernels read the smoothing row v (a constexpr): not at all (no smoothing term), as one
# scalar shared by every class, as a (K,) vector, or as row y of a (K, K) table.
NO_SMOOTHING, SCALAR_SMOOTHING, VECTOR_SMOOTHING, MATRIX_SMOOTHING = 0, 1, 2, 3
_SCALAR = tl.constexpr(SCALAR_SMOOTHING)
_VECTOR = tl.constexpr(VECTOR_SMOOTHING)
_MATRIX = tl.constexpr(MATRIX_SMOOTHING)
# Passed for an absent softcap or smoothing scalar: the kernels never read it then.
_UNUSED = 1.0


# 2. Kernels --------------------------------------------------------------------------------------


@triton.jit
def _tanh(u):
    """tanh with one exp, finite for every u: sign(u) (1 - e) / (1 + e), e = exp(-2 |u|)."""
    e = tl.exp(-2.0 * tl.abs(u))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(u < 0, -t, t)


@triton.jit
def _row_target(target_ptr, row, num_classes):
    """The row's target column as int32, -1 when out of range (possible with validate_args=False:
    such a row reads no target logit and no smoothing row, and has no one-hot column)."""
    y = tl.load(target_ptr + row).to(tl.int64)
    return tl.where((y >= 0) & (y < num_classes), y, -1).to(tl.int32)


@triton.jit
def _smoothing_row(smoothing_ptr, y, num_classes, SMOOTHING: tl.constexpr):
    """Where row y's smoothing weights start, and how many columns of them to read (0 for y = -1)."""
    v_ptr = smoothing_ptr
    if SMOOTHING == _MATRIX:
        v_ptr = smoothing_ptr + tl.maximum(y, 0).to(tl.int64) * num_classes
    return v_ptr, tl.where(y >= 0, num_classes, 0)


@triton.jit
def _load_block(row_ptr, cols, num_classes, softcap, HAS_SOFTCAP: tl.constexpr, ACC: tl.constexpr):
    """(capped logits, tanh) of one block in ACC; columns past the row read 0 (and tanh 0)."""
    x = tl.load(row_ptr + cols, mask=cols < num_classes, other=0.0).to(ACC)
    t = x
    if HAS_SOFTCAP:
        t = _tanh(x / softcap)
        x = softcap * t
    return x, t


@triton.jit
def _block_smoothing(v_ptr, cols, v_columns, SMOOTHING: tl.constexpr, ACC: tl.constexpr):
    """v of one block for a vector or table (0 past the row); call only for those two modes."""
    return tl.load(v_ptr + cols, mask=cols < v_columns, other=0.0).to(ACC)


@triton.jit
def _block_dot(x, cols, v_ptr, v_columns, SMOOTHING: tl.constexpr, ACC: tl.constexpr):
    """This block's share of dot: sum v_c x_c, or sum x_c for the scalar path (scaled at the end)."""
    if SMOOTHING == _SCALAR:
        return tl.sum(x, 0)
    return tl.sum(_block_smoothing(v_ptr, cols, v_columns, SMOOTHING, ACC) * x, 0)


@triton.jit
def _finish_dot(dot, v_scalar, v_columns, SMOOTHING: tl.constexpr):
    if SMOOTHING == _SCALAR:
        dot = tl.where(v_columns > 0, dot * v_scalar, 0.0)
    return dot


@triton.jit
def _target_logit(row_ptr, y, softcap, HAS_SOFTCAP: tl.constexpr, ACC: tl.constexpr):
    """x_y: one masked scalar load (0 for y = -1)."""
    x_y = tl.load(row_ptr + tl.maximum(y, 0), mask=y >= 0, other=0.0).to(ACC)
    if HAS_SOFTCAP:
        x_y = softcap * _tanh(x_y / softcap)
    return x_y


@triton.jit
def _block_max(x, PREDICTIONS: tl.constexpr):
    """The maximum of a block of (capped) logits and, with PREDICTIONS, its first arg-max (the
    first index wins ties, as torch.argmax) from the same reduction; 0 without."""
    if PREDICTIONS:
        m, index = tl.max(x, 0, return_indices=True, return_indices_tie_break_left=True)
    else:
        m = tl.max(x, 0)
        index = 0
    return m, index


@triton.jit
def _resident_statistics(row_ptr, y, v_ptr, v_columns, v_scalar, num_classes, softcap,
                         SMOOTHING: tl.constexpr, HAS_SOFTCAP: tl.constexpr, BLOCK: tl.constexpr,
                         PREDICTIONS: tl.constexpr, ACC: tl.constexpr):
    """A whole row (BLOCK >= K) read once: (lse, x_y, dot, arg-max) and, kept in registers for the
    gradient, softmax numerators e = exp(x - shift), their sum, and tanh (softcap)."""
    cols = tl.arange(0, BLOCK)
    x, t = _load_block(row_ptr, cols, num_classes, softcap, HAS_SOFTCAP, ACC)
    dot = tl.zeros((), ACC)
    if SMOOTHING != 0:
        dot = _finish_dot(_block_dot(x, cols, v_ptr, v_columns, SMOOTHING, ACC), v_scalar, v_columns, SMOOTHING)
    x = tl.where(cols < num_classes, x, float("-inf"))
    m, index = _block_max(x, PREDICTIONS)
    shift = tl.where(m == float("-inf"), 0.0, m)  # an all -inf row: exp(-inf - 0) = 0, no nan
    e = tl.exp(x - shift)
    total = tl.sum(e, 0)
    lse = shift + tl.log(total)
    return lse, _target_logit(row_ptr, y, softcap, HAS_SOFTCAP, ACC), dot, index, e, total, t


@triton.jit
def _streamed_statistics(row_ptr, y, v_ptr, v_columns, v_scalar, num_classes, softcap,
                         SMOOTHING: tl.constexpr, HAS_SOFTCAP: tl.constexpr, BLOCK: tl.constexpr,
                         PREDICTIONS: tl.constexpr, ACC: tl.constexpr):
    """(lse, x_y, dot, arg-max) of a row read once in blocks, with an online log-sum-exp; a later
    block's arg-max replaces the running one only where its maximum is strictly larger."""
    m = tl.full((), float("-inf"), ACC)
    s = tl.zeros((), ACC)
    dot = tl.zeros((), ACC)
    index = tl.zeros((), tl.int32)
    for start in range(0, num_classes, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x, t = _load_block(row_ptr, cols, num_classes, softcap, HAS_SOFTCAP, ACC)
        if SMOOTHING != 0:
            dot += _block_dot(x, cols, v_ptr, v_columns, SMOOTHING, ACC)
        # s = sum exp(x - m) so far; rescaled when the maximum m grows. While the row is all -inf
        # the shift is 0 (exp(-inf - -inf) would be nan) and s stays 0.
        x = tl.where(cols < num_classes, x, float("-inf"))
        block_max, block_index = _block_max(x, PREDICTIONS)
        if PREDICTIONS:
            index = tl.where(block_max > m, start + block_index, index)
        m_new = tl.maximum(m, block_max)
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - shift) + tl.sum(tl.exp(x - shift), 0)
        m = m_new
    lse = m + tl.log(s)
    dot = _finish_dot(dot, v_scalar, v_columns, SMOOTHING)
    return lse, _target_logit(row_ptr, y, softcap, HAS_SOFTCAP, ACC), dot, index


@triton.jit
def _row_statistics(row_ptr, y, v_ptr, v_columns, v_scalar, num_classes, softcap,
                    SMOOTHING: tl.constexpr, HAS_SOFTCAP: tl.constexpr, BLOCK: tl.constexpr,
                    RESIDENT: tl.constexpr, PREDICTIONS: tl.constexpr, ACC: tl.constexpr):
    """(lse, x_y, dot, arg-max, e, total, t) of a row: resident (:func:`_resident_statistics`) or
    streamed (:func:`_streamed_statistics`, which keeps nothing for the gradient: e, total, t are 0)."""
    if RESIDENT:
        return _resident_statistics(row_ptr, y, v_ptr, v_columns, v_scalar, num_classes, softcap, SMOOTHING,
                                    HAS_SOFTCAP, BLOCK, PREDICTIONS, ACC)
    else:
        lse, x_y, dot, index = _streamed_statistics(row_ptr, y, v_ptr, v_columns, v_scalar, num_classes, softcap,
                                                    SMOOTHING, HAS_SOFTCAP, BLOCK, PREDICTIONS, ACC)
        zero = tl.zeros((), ACC)
        return lse, x_y, dot, index, zero, zero, zero


@triton.jit
def _store_statistics(lse_ptr, target_logit_ptr, dot_ptr, row, lse, x_y, dot):
    tl.store(lse_ptr + row, lse)
    tl.store(target_logit_ptr + row, x_y)
    tl.store(dot_ptr + row, dot)


@triton.jit
def _gradient_block(softmax, t, cols, y, v_ptr, v_columns, v_scalar, g_lse, g_xy, g_dot,
                    SMOOTHING: tl.constexpr, HAS_SOFTCAP: tl.constexpr, ACC: tl.constexpr):
    """(g_lse softmax + g_xy [k == y] + g_dot v) (1 - t^2) for one block; int32 column compare."""
    grad = g_lse * softmax
    if SMOOTHING == _SCALAR:
        grad += tl.where(v_columns > 0, g_dot * v_scalar, 0.0)
    elif SMOOTHING != 0:
        grad += g_dot * _block_smoothing(v_ptr, cols, v_columns, SMOOTHING, ACC)
    grad = tl.where(cols == y, grad + g_xy, grad)
    if HAS_SOFTCAP:
        grad = grad * (1.0 - t * t)
    return grad


@triton.jit
def _write_streamed_gradient(row_ptr, grad_row_ptr, y, v_ptr, v_columns, v_scalar, num_classes, softcap,
                             lse, g_lse, g_xy, g_dot, SMOOTHING: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                             BLOCK: tl.constexpr, ACC: tl.constexpr):
    """The gradient of a row read again in blocks; each block is read before it is written, so
    grad_row_ptr may be row_ptr (in place)."""
    for start in range(0, num_classes, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x, t = _load_block(row_ptr, cols, num_classes, softcap, HAS_SOFTCAP, ACC)
        grad = _gradient_block(tl.exp(x - lse), t, cols, y, v_ptr, v_columns, v_scalar, g_lse, g_xy, g_dot,
                               SMOOTHING, HAS_SOFTCAP, ACC)
        tl.store(grad_row_ptr + cols, grad.to(grad_row_ptr.dtype.element_ty), mask=cols < num_classes)


@triton.jit
def _write_zeros(grad_row_ptr, num_classes, BLOCK: tl.constexpr):
    """A row whose gradient is exactly zero (ignored): written without reading the logits."""
    for start in range(0, num_classes, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        tl.store(grad_row_ptr + cols, tl.zeros((BLOCK,), grad_row_ptr.dtype.element_ty), mask=cols < num_classes)


@triton.jit
def _statistics_kernel(logits_ptr, row_stride, target_ptr, smoothing_ptr, v_scalar,
                       lse_ptr, target_logit_ptr, dot_ptr, prediction_ptr, num_classes, softcap,
                       SMOOTHING: tl.constexpr, HAS_SOFTCAP: tl.constexpr, BLOCK: tl.constexpr,
                       RESIDENT: tl.constexpr, PREDICTIONS: tl.constexpr, ACC: tl.constexpr):
    """One program per row: (lse, x_y, dot) into three (M,) vectors, and with PREDICTIONS the
    row's arg-max (int64) into a fourth."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * row_stride
    y = _row_target(target_ptr, row, num_classes)
    v_ptr, v_columns = _smoothing_row(smoothing_ptr, y, num_classes, SMOOTHING)
    lse, x_y, dot, index, _, _, _ = _row_statistics(row_ptr, y, v_ptr, v_columns, v_scalar, num_classes, softcap,
                                                    SMOOTHING, HAS_SOFTCAP, BLOCK, RESIDENT, PREDICTIONS, ACC)
    _store_statistics(lse_ptr, target_logit_ptr, dot_ptr, row, lse, x_y, dot)
    if PREDICTIONS:
        tl.store(prediction_ptr + row, index.to(tl.int64))


@triton.jit
def _gradient_kernel(logits_ptr, row_stride, grad_ptr, grad_row_stride, target_ptr, smoothing_ptr, v_scalar,
                     lse_ptr, g_lse_ptr, g_xy_ptr, g_dot_ptr, num_classes, softcap,
                     SMOOTHING: tl.constexpr, HAS_SOFTCAP: tl.constexpr, BLOCK: tl.constexpr,
                     ACC: tl.constexpr):
    """One program per row: the gradient for upstream gradients given per row (one read of the
    row, resident or streamed alike: lse is known). A row whose three
    upstream gradients are all 0 (ignored) is written as zeros without reading its logits."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * row_stride
    grad_row_ptr = grad_ptr + row * grad_row_stride
    g_lse = tl.load(g_lse_ptr + row).to(ACC)
    g_xy = tl.load(g_xy_ptr + row).to(ACC)
    g_dot = tl.load(g_dot_ptr + row).to(ACC)
    if (g_lse == 0.0) & (g_xy == 0.0) & (g_dot == 0.0):
        _write_zeros(grad_row_ptr, num_classes, BLOCK)
    else:
        y = _row_target(target_ptr, row, num_classes)
        v_ptr, v_columns = _smoothing_row(smoothing_ptr, y, num_classes, SMOOTHING)
        lse = tl.load(lse_ptr + row)
        _write_streamed_gradient(row_ptr, grad_row_ptr, y, v_ptr, v_columns, v_scalar, num_classes, softcap,
                                 lse, g_lse, g_xy, g_dot, SMOOTHING, HAS_SOFTCAP, BLOCK, ACC)


@triton.jit
def _statistics_and_gradient_kernel(logits_ptr, row_stride, grad_ptr, grad_row_stride, target_ptr, ignore_index,
                                    smoothing_ptr, v_scalar, lse_ptr, target_logit_ptr, dot_ptr,
                                    a_ptr, b_ptr, g_xy_ptr, g_dot_ptr, num_classes, softcap,
                                    HAS_Z_LOSS: tl.constexpr, SMOOTHING: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                                    BLOCK: tl.constexpr, RESIDENT: tl.constexpr, ACC: tl.constexpr):
    """One program per row: the statistics, then the gradient for g_lse = a + b lse (b: z-loss).

    ``target_ptr`` holds the caller's targets: a row whose target equals ``ignore_index`` reads
    nothing, gets statistics 0 and a zero gradient. A resident row is read once: the gradient
    comes from the registers the statistics were computed in.
    """
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * row_stride
    grad_row_ptr = grad_ptr + row * grad_row_stride
    raw_target = tl.load(target_ptr + row).to(tl.int64)
    if raw_target == ignore_index:
        _write_zeros(grad_row_ptr, num_classes, BLOCK)
        zero = tl.zeros((), ACC)
        _store_statistics(lse_ptr, target_logit_ptr, dot_ptr, row, zero, zero, zero)
    else:
        y = _row_target(target_ptr, row, num_classes)
        v_ptr, v_columns = _smoothing_row(smoothing_ptr, y, num_classes, SMOOTHING)
        g_xy = tl.load(g_xy_ptr + row).to(ACC)
        g_dot = tl.load(g_dot_ptr + row).to(ACC)
        lse, x_y, dot, _, e, total, t = _row_statistics(row_ptr, y, v_ptr, v_columns, v_scalar, num_classes,
                                                        softcap, SMOOTHING, HAS_SOFTCAP, BLOCK, RESIDENT, False, ACC)
        _store_statistics(lse_ptr, target_logit_ptr, dot_ptr, row, lse, x_y, dot)
        g_lse = tl.load(a_ptr + row).to(ACC)
        if HAS_Z_LOSS:
            g_lse += tl.load(b_ptr + row).to(ACC) * lse
        if RESIDENT:
            cols = tl.arange(0, BLOCK)
            grad = _gradient_block(e * (1.0 / total), t, cols, y, v_ptr, v_columns, v_scalar, g_lse, g_xy, g_dot,
                                   SMOOTHING, HAS_SOFTCAP, ACC)
            tl.store(grad_row_ptr + cols, grad.to(grad_row_ptr.dtype.element_ty), mask=cols < num_classes)
        else:
            _write_streamed_gradient(row_ptr, grad_row_ptr, y, v_ptr, v_columns, v_scalar, num_classes, softcap,
                                     lse, g_lse, g_xy, g_dot, SMOOTHING, HAS_SOFTCAP, BLOCK, ACC)


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
            grad = tl.load(grad_row_ptr + cols, mask=cols < num_classes, other=0.0).to(ACC)
            tl.store(grad_row_ptr + cols, (grad * scale).to(grad_row_ptr.dtype.element_ty), mask=cols < num_classes)


# 3. Host functions -------------------------------------------------------------------------------


class SmoothingOperand(NamedTuple):
    """What the kernels read v from: ``tensor`` (a (K,) vector or (K, K) table; None for the
    scalar path or no smoothing), ``mode`` (a ``*_SMOOTHING`` constant) and ``scalar`` (v_c for
    the scalar path)."""

    tensor: Tensor | None
    mode: int
    scalar: float


def smoothing_operand(smoothing: Smoothing | None, accumulation: torch.dtype) -> SmoothingOperand:
    """The kernels' view of a resolved distribution: the scalar path when every v_c is one value
    known on the host and the statistics are fp32 (a float kernel argument is fp32: exactly the
    value an fp32 vector would hold)."""
    if smoothing is None:
        return SmoothingOperand(None, NO_SMOOTHING, _UNUSED)
    if smoothing.matrix is not None:
        return SmoothingOperand(smoothing.matrix.contiguous(), MATRIX_SMOOTHING, _UNUSED)
    if smoothing.constant is not None and accumulation == torch.float32:
        return SmoothingOperand(None, SCALAR_SMOOTHING, smoothing.constant)
    return SmoothingOperand(smoothing.vector.contiguous(), VECTOR_SMOOTHING, _UNUSED)


def _launch_options(logits: Tensor, mode: int, softcap: float | None) -> dict:
    """Compile-time flags and launch sizes shared by the row kernels (one heuristic: row_launch)."""
    acc = accumulation_dtype(logits.dtype)
    launch = row_launch(logits.shape[1], acc)
    return dict(SMOOTHING=mode, HAS_SOFTCAP=softcap is not None, BLOCK=launch.block, RESIDENT=launch.resident,
                ACC=triton_dtype(acc), num_warps=launch.num_warps)


def _statistics_buffers(logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    acc = accumulation_dtype(logits.dtype)
    return tuple(torch.empty(logits.shape[0], dtype=acc, device=logits.device) for _ in range(3))


def _prediction_buffer(logits: Tensor, predictions: bool) -> Tensor:
    """(M,) int64 for the rows' arg-max, or an empty (0,) one when they are not wanted."""
    return torch.empty(logits.shape[0] if predictions else 0, dtype=torch.int64, device=logits.device)


def _new_gradient(logits: Tensor) -> Tensor:
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


def _kernel_op(name: str, schema: str, mutates: tuple[str, ...], fake: Callable) -> Callable[[Callable], Callable]:
    """Registers a launcher as the custom operator ``labelsmooth::<name>`` (with ``fake`` for
    tracing) and returns a function that calls the operator while ``torch.compile`` traces and
    the launcher itself otherwise (eager calls skip the dispatcher)."""

    def register(launcher: Callable) -> Callable:
        op = torch.library.custom_op(f"labelsmooth::{name}", launcher, mutates_args=mutates, schema=schema)
        op.register_fake(fake)

        def call(*args):
            return op(*args) if torch.compiler.is_compiling() else launcher(*args)

        call.__doc__, call.__name__ = launcher.__doc__, launcher.__name__
        return call

    return register


_SMOOTHING_ARGS = "Tensor? smoothing, int mode, float scalar, float? softcap"


def _fake_statistics(logits, *args):
    return _statistics_buffers(logits)


def _fake_statistics_and_predictions(logits, *args):
    return (*_statistics_buffers(logits), _prediction_buffer(logits, args[-1]))


def _fake_gradient(logits, *args):
    return _new_gradient(logits)


def _fake_statistics_and_gradient(logits, *args):
    return (*_statistics_buffers(logits), _new_gradient(logits))


def _fake_nothing(*args):
    return None


@_kernel_op("row_statistics", f"(Tensor logits, Tensor target, {_SMOOTHING_ARGS}, bool predictions) -> "
                              f"(Tensor, Tensor, Tensor, Tensor)", (), _fake_statistics_and_predictions)
def statistics(logits: Tensor, target: Tensor, smoothing: Tensor | None, mode: int, scalar: float,
               softcap: float | None, predictions: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(lse, x_y, dot, prediction) of (M, K) logits with unit column stride: with ``predictions``
    each row's arg-max of the (capped) logits, (M,) int64, from the same read; else an empty one."""
    lse, target_logit, dot = _statistics_buffers(logits)
    prediction = _prediction_buffer(logits, predictions)
    if logits.shape[0]:
        with device_guard(logits):
            _statistics_kernel[(logits.shape[0],)](
                logits, logits.stride(0), target, lse if smoothing is None else smoothing, scalar,
                lse, target_logit, dot, prediction if predictions else lse, logits.shape[1],
                _UNUSED if softcap is None else softcap, PREDICTIONS=predictions,
                **_launch_options(logits, mode, softcap))
    return lse, target_logit, dot, prediction


def _launch_gradient(logits: Tensor, grad: Tensor, target: Tensor, smoothing: Tensor | None, mode: int,
                     scalar: float, softcap: float | None, lse: Tensor, g_lse: Tensor, g_xy: Tensor,
                     g_dot: Tensor) -> None:
    """Write the gradient for upstream (g_lse, g_xy, g_dot), each (M,) of any stride, into ``grad``."""
    if not logits.shape[0]:
        return
    options = _launch_options(logits, mode, softcap)
    del options["RESIDENT"]  # one read of the row either way: lse is known
    g_lse, g_xy, g_dot = (g.contiguous() for g in (g_lse, g_xy, g_dot))
    with device_guard(logits):
        _gradient_kernel[(logits.shape[0],)](
            logits, logits.stride(0), grad, grad.stride(0), target, lse if smoothing is None else smoothing,
            scalar, lse, g_lse, g_xy, g_dot, logits.shape[1], _UNUSED if softcap is None else softcap, **options)


_GRADIENT_ARGS = f"Tensor target, {_SMOOTHING_ARGS}, Tensor lse, Tensor g_lse, Tensor g_xy, Tensor g_dot"


@_kernel_op("row_statistics_gradient", f"(Tensor logits, {_GRADIENT_ARGS}) -> Tensor", (), _fake_gradient)
def gradient(logits: Tensor, target: Tensor, smoothing: Tensor | None, mode: int, scalar: float,
             softcap: float | None, lse: Tensor, g_lse: Tensor, g_xy: Tensor, g_dot: Tensor) -> Tensor:
    """The gradient of the row statistics for upstream (g_lse, g_xy, g_dot), in a new buffer."""
    grad = _new_gradient(logits)
    _launch_gradient(logits, grad, target, smoothing, mode, scalar, softcap, lse, g_lse, g_xy, g_dot)
    return grad


@_kernel_op("row_statistics_gradient_", f"(Tensor(a!) logits, {_GRADIENT_ARGS}) -> ()", ("logits",),
            _fake_nothing)
def gradient_(logits: Tensor, target: Tensor, smoothing: Tensor | None, mode: int, scalar: float,
              softcap: float | None, lse: Tensor, g_lse: Tensor, g_xy: Tensor, g_dot: Tensor) -> None:
    """The same gradient, written over the logits."""
    _launch_gradient(logits, logits, target, smoothing, mode, scalar, softcap, lse, g_lse, g_xy, g_dot)


def _launch_statistics_and_gradient(logits: Tensor, grad: Tensor, target: Tensor, ignore_index: int,
                                    smoothing: Tensor | None, mode: int, scalar: float, softcap: float | None,
                                    a: Tensor, b: Tensor | None, g_xy: Tensor, g_dot: Tensor
                                    ) -> tuple[Tensor, Tensor, Tensor]:
    """(lse, x_y, dot), and the gradient for g_lse = a + b lse (b None: no z-loss) into ``grad``."""
    lse, target_logit, dot = _statistics_buffers(logits)
    if logits.shape[0]:
        with device_guard(logits):
            _statistics_and_gradient_kernel[(logits.shape[0],)](
                logits, logits.stride(0), grad, grad.stride(0), target, ignore_index,
                lse if smoothing is None else smoothing, scalar, lse, target_logit, dot,
                a, a if b is None else b, g_xy, g_dot, logits.shape[1], _UNUSED if softcap is None else softcap,
                HAS_Z_LOSS=b is not None, **_launch_options(logits, mode, softcap))
    return lse, target_logit, dot


_COEFFICIENT_ARGS = (f"Tensor target, int ignore_index, {_SMOOTHING_ARGS}, "
                     "Tensor a, Tensor? b, Tensor g_xy, Tensor g_dot")


@_kernel_op("loss_statistics_and_gradient", f"(Tensor logits, {_COEFFICIENT_ARGS}) -> (Tensor, Tensor, Tensor, Tensor)",
            (), _fake_statistics_and_gradient)
def statistics_and_gradient(logits: Tensor, target: Tensor, ignore_index: int, smoothing: Tensor | None,
                            mode: int, scalar: float, softcap: float | None, a: Tensor, b: Tensor | None,
                            g_xy: Tensor, g_dot: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(lse, x_y, dot, gradient) of the loss whose per-row coefficients are given."""
    grad = _new_gradient(logits)
    return (*_launch_statistics_and_gradient(logits, grad, target, ignore_index, smoothing, mode, scalar, softcap,
                                             a, b, g_xy, g_dot), grad)


@_kernel_op("loss_statistics_and_gradient_", f"(Tensor(a!) logits, {_COEFFICIENT_ARGS}) -> (Tensor, Tensor, Tensor)",
            ("logits",), _fake_statistics)
def statistics_and_gradient_(logits: Tensor, target: Tensor, ignore_index: int, smoothing: Tensor | None,
                             mode: int, scalar: float, softcap: float | None, a: Tensor, b: Tensor | None,
                             g_xy: Tensor, g_dot: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The same, the gradient written over the logits."""
    return _launch_statistics_and_gradient(logits, logits, target, ignore_index, smoothing, mode, scalar, softcap,
                                           a, b, g_xy, g_dot)


@_kernel_op("scale_rows_", "(Tensor(a!) grad, Tensor scale) -> ()", ("grad",), _fake_nothing)
def scale_rows_(grad: Tensor, scale: Tensor) -> None:
    """grad (M, K) *= scale, a 0-dim tensor or one factor per row; rows with factor 1 are skipped."""
    scale = scale.reshape(-1)
    if grad.shape[0]:
        acc = accumulation_dtype(grad.dtype)
        launch = row_launch(grad.shape[1], acc)
        with device_guard(grad):
            _scale_rows_kernel[(grad.shape[0],)](
                grad, grad.stride(0), scale, 0 if scale.numel() == 1 else scale.stride(0), grad.shape[1],
                BLOCK=launch.block, ACC=triton_dtype(acc), num_warps=launch.num_warps)
