"""The fused linear loss on CUDA: token chunks of whole-vocabulary tiles through the Triton kernel.

:func:`labelsmooth.linear_cross_entropy` with ``impl="triton"`` (and ``"auto"`` on CUDA for a
scalar loss) computes, per chunk of C tokens (bias optional)::

    Z = h W^T + b                        one GEMM into a (C, V) tile, in the compute dtype
    (lse, x_y, dot), dZ = kernel(Z)      one read of the tile, dZ written over it (ignored rows: 0)
    dh = dZ W                            one GEMM, written once (whole-vocabulary tiles)
    dW += dZ^T h,  db += sum_n dZ        summed in place in fp32 (an fp32-output GEMM on CUDA)

with dZ for an upstream gradient of 1, from the per-row coefficients of
``engine.loss_gradient_coefficients`` (so class weights, every distribution, per-sample eps,
z-loss, softcap and ignore_index are exactly those of :func:`labelsmooth.cross_entropy`). Three
GEMMs per tile, no (V, D) product per chunk, no N x V tensor. Backward only multiplies the stored
gradients by the upstream scalar, so the loss may be backpropagated once.

Memory: one tile (``chunk x V`` in the compute dtype; the chunk is chosen from the device's
free memory, :func:`triton_chunk_size`), dh, and the fp32 dW and db accumulators (for a bf16
head that is an fp32 (V, D) buffer beside the bf16 gradient it becomes).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..engine import (
    ClassTargets,
    LossParts,
    accumulation_dtype,
    class_target_loss,
    loss_gradient_coefficients,
    single_backward,
)
from . import cross_entropy_kernels as kernels
from .linear_cross_entropy_chunked import gradients_formed_in_forward
from .utils import check_kernel_device

__all__ = ["triton_chunk_size", "triton_linear_cross_entropy"]

# The tile takes this fraction of the device's free memory, within these bounds (bytes).
TILE_FRACTION_OF_FREE = 1 / 8
TILE_BYTES_RANGE = (64 * 2**20, 1024 * 2**20)
# Token chunks are rounded down to a multiple of this (GEMM-friendly), when at least this large.
CHUNK_MULTIPLE = 128


def triton_chunk_size(num_tokens: int, vocab: int, dtype: torch.dtype, device: torch.device,
                      chunk_size: int | None = None) -> int:
    """Tokens per tile: ``chunk_size``, else the tile bytes (1/8 of free memory, clamped to
    64 MiB .. 1 GiB; 64 MiB off CUDA) over a row's bytes, a multiple of 128 when that large.

    >>> triton_chunk_size(16384, 128256, torch.bfloat16, torch.device("cpu"))   # 64 MiB / 256512 B = 261 -> 256
    256
    >>> triton_chunk_size(100, 50, torch.float32, torch.device("cpu"), chunk_size=32)
    32
    """
    if chunk_size is None:
        low, high = TILE_BYTES_RANGE
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
        budget = min(max(int(free * TILE_FRACTION_OF_FREE), low), high)
        chunk_size = max(1, budget // (vocab * torch.empty((), dtype=dtype).element_size()))
        if chunk_size >= CHUNK_MULTIPLE:
            chunk_size -= chunk_size % CHUNK_MULTIPLE
    return max(1, min(chunk_size, num_tokens))


def _add_product(accumulator: Tensor, a: Tensor, b: Tensor) -> None:
    """``accumulator += a @ b`` in the accumulator's dtype, without an (a.rows, b.cols) temporary:
    one fp32-output GEMM for half-precision operands on CUDA (torch >= 2.8), else the operands
    (chunk-sized) are upcast first."""
    if a.dtype == accumulator.dtype:
        accumulator.addmm_(a, b)
    elif accumulator.is_cuda and hasattr(torch.ops.aten.addmm, "dtype_out"):
        torch.addmm(accumulator, a, b, out_dtype=accumulator.dtype, out=accumulator)
    else:
        accumulator.addmm_(a.to(accumulator.dtype), b.to(accumulator.dtype))


def _tiles(hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, ignore_index: int,
           targets: ClassTargets, coefficients: tuple | None, softcap: float | None, chunk: int,
           needs: tuple[bool, bool, bool], predictions: bool) -> tuple[tuple[Tensor, ...], tuple]:
    """Statistics of every row (and with ``predictions`` each row's arg-max; forward only) and,
    with ``coefficients`` (a, b, g_xy, g_dot), the gradients (dh, dW, db) of the loss for an
    upstream gradient of 1 (None where not needed)."""
    acc = accumulation_dtype(hidden.dtype)
    operand = kernels.smoothing_operand(targets.smoothing, acc)
    num_tokens, vocab = hidden.shape[0], weight.shape[0]
    statistics = tuple(torch.empty(num_tokens, dtype=acc, device=hidden.device) for _ in range(3))
    if predictions:
        statistics += (torch.empty(num_tokens, dtype=torch.int64, device=hidden.device),)
    grad_hidden = torch.empty_like(hidden) if coefficients is not None and needs[0] else None
    grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if coefficients and needs[1] else None
    grad_bias = torch.zeros(vocab, dtype=acc, device=weight.device) if coefficients and needs[2] else None
    for n0 in range(0, num_tokens, chunk):
        n1 = min(n0 + chunk, num_tokens)
        h = hidden[n0:n1]
        logits = torch.mm(h, weight.t()) if bias is None else torch.addmm(bias, h, weight.t())
        if coefficients is None:
            # (lse, x_y, dot, arg-max): whole-vocabulary tiles, so the tile's arg-max is the row's
            chunk_statistics = kernels.statistics(logits, targets.target[n0:n1], operand.tensor, operand.mode,
                                                  operand.scalar, softcap, predictions)[:len(statistics)]
        else:
            a, b, g_xy, g_dot = (None if c is None else c[n0:n1] for c in coefficients)
            chunk_statistics = kernels.statistics_and_gradient_(logits, target[n0:n1], ignore_index,
                                                                operand.tensor, operand.mode, operand.scalar, softcap,
                                                                a, b, g_xy, g_dot)
            if grad_hidden is not None:  # logits now hold dZ
                torch.mm(logits, weight, out=grad_hidden[n0:n1])
            if grad_weight is not None:
                _add_product(grad_weight, logits.t(), h)
            if grad_bias is not None:
                grad_bias += logits.sum(0, dtype=acc)
        for whole, part in zip(statistics, chunk_statistics):
            whole[n0:n1] = part
        del logits
    return statistics, (grad_hidden, grad_weight, grad_bias)


class _LinearLossWithPrecomputedGradients(torch.autograd.Function):
    """Passes the loss through; backward scales the gradients formed in forward (once)."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, loss: Tensor, grad_hidden: Tensor | None,
                grad_weight: Tensor | None, grad_bias: Tensor | None):
        ctx.grads = (grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = tuple(None if t is None else t.dtype for t in (hidden, weight, bias))
        return loss.clone()

    @staticmethod
    @single_backward("linear_cross_entropy")
    def backward(ctx, grad_loss: Tensor):
        grads = gradients_formed_in_forward(ctx)
        scaled = tuple(None if g is None else g.mul_(grad_loss.to(g.dtype)).to(dtype)
                       for g, dtype in zip(grads, ctx.dtypes))
        return (*scaled, None, None, None, None)


def triton_linear_cross_entropy(hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor,
                                targets: ClassTargets, *, ignore_index: int, class_weight: Tensor | None,
                                z_loss: float, softcap: float | None, reduction: str, return_parts: bool,
                                chunk_size: int | None, dtype: torch.dtype) -> Tensor | LossParts:
    """The loss of ``hidden`` (N, D) against the head ``weight`` (V, D) / ``bias`` (V,), all in one
    compute dtype; ``target`` (N,) the caller's flattened targets, ``targets`` their resolution.
    With a gradient wanted the loss must be a scalar (mean or sum, no parts); ``dtype`` is the
    loss's."""
    check_kernel_device(hidden, "hidden")
    acc = accumulation_dtype(hidden.dtype)
    needs = tuple(t is not None and t.requires_grad for t in (hidden, weight, bias))
    wants_grad = torch.is_grad_enabled() and any(needs)
    coefficients = None
    if wants_grad:
        coefficients = loss_gradient_coefficients(targets, z_loss=z_loss, reduction=reduction, dtype=acc)
    chunk = triton_chunk_size(hidden.shape[0], weight.shape[0], hidden.dtype, hidden.device, chunk_size)
    with torch.no_grad():
        (lse, target_logit, dot, *prediction), grads = _tiles(
            hidden.detach(), weight.detach(), None if bias is None else bias.detach(), target.contiguous(),
            ignore_index, targets, coefficients, softcap, chunk, needs, return_parts and not wants_grad)
    loss = class_target_loss(lse, target_logit, dot, targets, weight=class_weight, z_loss=z_loss,
                             reduction=reduction, dtype=dtype, return_parts=return_parts,
                             prediction=prediction[0] if prediction else None)
    if not wants_grad:
        return loss
    return _LinearLossWithPrecomputedGradients.apply(hidden, weight, bias, loss, *grads)
