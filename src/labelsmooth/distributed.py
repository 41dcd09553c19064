"""Exact label-smoothed cross-entropy for tensor-parallel LM heads that split the vocabulary.

Each rank of a process group holds a contiguous slice of the vocabulary, in rank order, as its
``local_logits`` (N, K_local); the loss and every rank's gradient are those of the single-process
:func:`labelsmooth.cross_entropy` on the concatenated (N, K) logits, whatever the number of ranks
and however uneven the slices. (Megatron-LM's vocab-parallel loss instead smooths with the local
K and the local mean, so its result changes with the tensor-parallel degree.)

The loss needs three per-row statistics (see :mod:`labelsmooth.engine`), and each is a sum over
the vocabulary, so each rank computes them on its slice with the ordinary row-statistics
provider and two all-reduces combine them::

    m   = max_r lse_r                                  (MAX all-reduce, (M,))
    lse = m + log sum_r exp(lse_r - m)                 )
    x_y = sum_r [rank r owns y] x_y                    )  one SUM all-reduce of a (3, M) tensor
    dot = sum_r sum_{c in slice r} w_c u(c | y) x_c    )

after which :func:`labelsmooth.engine.combine_row_statistics` and the usual reduction run,
replicated, on every rank. Backward needs no communication: every rank holds the same loss, and
its gradient ``g_lse exp(x - lse) + g_xy onehot(y) + g_dot w u(. | y)`` on its own slice uses
the global ``lse``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ._checks import (
    check_class_weight,
    check_index_target,
    check_label_smoothing,
    check_logit_options,
    check_logits,
    check_reduction,
)
from .engine import (
    LossParts,
    accumulation_dtype,
    class_target_loss,
    prepare_class_targets,
    to_rows,
    torch_row_statistics,
)
from .targets import Distribution, Smoothing

__all__ = ["vocab_parallel_cross_entropy"]


class _AllReduceRowStatistics(torch.autograd.Function):
    """Global (lse, x_y, dot) per row from each rank's statistics of its vocabulary slice.

    Forward: the MAX and the fused SUM all-reduce of the module docstring. Backward, local to
    each rank (the upstream gradients are the same on every rank, since every rank computes the
    same loss from the same global statistics)::

        d lse / d lse_r = exp(lse_r - lse),   d x_y / d x_y^r = [rank r owns y],   d dot / d dot_r = 1

    The local provider's backward turns ``g_lse exp(lse_r - lse)`` into ``g_lse exp(x - lse)``:
    the softmax with the global normalizer.
    """

    @staticmethod
    def forward(ctx, local_lse: Tensor, local_target_logit: Tensor, local_dot: Tensor,
                owned: Tensor, group):
        row_max = local_lse.clone()
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        sums = torch.stack([(local_lse - row_max).exp(), torch.where(owned, local_target_logit, 0.0),
                            local_dot])
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
        lse = row_max + sums[0].log()
        ctx.save_for_backward(local_lse, lse, owned)
        return lse, sums[1], sums[2]

    @staticmethod
    def backward(ctx, grad_lse: Tensor, grad_target_logit: Tensor, grad_dot: Tensor):
        local_lse, lse, owned = ctx.saved_tensors
        return (grad_lse * (local_lse - lse).exp(), torch.where(owned, grad_target_logit, 0.0),
                grad_dot, None, None)


def _vocab_offset(local_logits: Tensor, target: Tensor, group, validate_args: bool) -> tuple[int, list[int]]:
    """This rank's first class and every rank's slice size, from one all-gather (and one host sync).

    Each rank contributes (K_local, rows, a checksum of ``target``), so that every rank reaches
    the same verdict on inconsistent inputs and raises before the loss's collectives start.
    """
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    flat_target = target.reshape(-1).long()
    checksum = ((flat_target + 1) * torch.arange(1, flat_target.numel() + 1, device=target.device)).sum() \
        if validate_args else torch.zeros((), dtype=torch.int64, device=target.device)
    counts = torch.tensor([local_logits.shape[1], flat_target.numel()], device=target.device)
    gathered = torch.zeros(world_size, 3, dtype=torch.int64, device=local_logits.device)
    gathered[rank] = torch.cat([counts, checksum.reshape(1)]).to(gathered.device)
    dist.all_reduce(gathered, op=dist.ReduceOp.SUM, group=group)  # an all-gather every backend has
    sizes, rows, checksums = (list(column) for column in zip(*gathered.tolist()))
    if min(sizes) < 1:
        raise ValueError(f"local_logits must hold at least one class on every rank of group; "
                         f"slice sizes by rank: {sizes}")
    if len(set(rows)) > 1:
        raise ValueError(f"local_logits must have the same rows (N, d1, ...) on every rank of group; "
                         f"rows by rank: {rows}")
    if len(set(checksums)) > 1:
        raise ValueError("target must be the same on every rank of group (the tensor-parallel ranks "
                         "share one batch); the ranks' targets differ")
    return sum(sizes[:rank]), sizes


def _slice_smoothing(smoothing: Smoothing, columns: slice) -> Smoothing:
    """The shared (vector) smoothing restricted to this rank's columns."""
    return Smoothing(smoothing.vector[columns], None, smoothing.non_target, smoothing.num_classes)


def _local_row_statistics(rows: Tensor, local_target: Tensor, target: Tensor,
                          smoothing: Smoothing | None, offset: int, predictions: bool) -> tuple[Tensor, ...]:
    """(lse_r, x_y^r, dot_r) of this rank's slice; ``local_target`` indexes the slice (0 if not owned).
    With ``predictions``, a fourth: the arg-max within the slice.

    A class-conditional distribution's row is chosen by the *global* target, so its dot product
    is taken here rather than in the provider. The provider is the hook for a fused kernel: the
    Triton provider (``labelsmooth.ops.cross_entropy.row_statistics``) computes the same
    statistics on CUDA.
    """
    columns = slice(offset, offset + rows.shape[1])
    if smoothing is not None and smoothing.matrix is not None:
        lse, target_logit, _, *prediction = torch_row_statistics(rows, local_target, None, None,
                                                                 predictions=predictions)
        dot = torch.einsum("nk,nk->n", rows.to(lse.dtype), smoothing.matrix[target, columns])
        return lse, target_logit, dot, *prediction
    local = _slice_smoothing(smoothing, columns) if smoothing is not None else None
    return torch_row_statistics(rows, local_target, local, None, predictions=predictions)


def _global_prediction(rows: Tensor, local_prediction: Tensor, offset: int, num_classes: int, group) -> Tensor:
    """Each row's arg-max over the whole vocabulary (the first index wins ties), from every rank's
    arg-max of its slice: two all-reduces of (M,) vectors (MAX of the values, MIN of the indices
    that reach it)."""
    local_max = rows.gather(1, local_prediction.unsqueeze(1)).squeeze(1).to(accumulation_dtype(rows.dtype))
    row_max = local_max.clone()
    dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
    prediction = torch.where(local_max == row_max, local_prediction + offset, num_classes)
    dist.all_reduce(prediction, op=dist.ReduceOp.MIN, group=group)
    return prediction


def vocab_parallel_cross_entropy(local_logits: Tensor, target: Tensor, label_smoothing: float | Tensor = 0.0,
                                 *, weight: Tensor | None = None, group=None, ignore_index: int = -100,
                                 reduction: str = "mean", distribution: Distribution = "uniform",
                                 z_loss: float = 0.0, return_parts: bool = False,
                                 validate_args: bool = True) -> Tensor | LossParts:
    r"""Label-smoothed cross-entropy over logits whose vocabulary is split across ``group``.

    Rank r of ``group`` holds classes ``[sum(K_0..K_{r-1}), ... + K_r)`` of the K-class vocabulary
    (contiguous, in rank order, sizes may differ). The result, on every rank, is exactly
    ``labelsmooth.cross_entropy(cat(local_logits of all ranks, dim=1), target, weight, ...)``::

        loss = (1 - eps) w_y (-log p_y) + eps sum_c w_c u(c | y) (-log p_c) + z_loss lse^2

    and ``local_logits.grad`` is this rank's columns of that loss's gradient.

    Communication per call: an all-gather of (K_local, rows, target checksum) with one host sync,
    to learn the offsets and the global K; a MAX all-reduce of an (M,) tensor and one SUM
    all-reduce of a (3, M) tensor (M = N * d1 * ...); nothing in backward. ``target``,
    ``label_smoothing``, ``weight`` and ``distribution`` are the same on every rank. Soft
    (probability) targets are not supported. Logit soft-capping is elementwise: apply
    ``c * tanh(local_logits / c)`` before the call.

    Args:
        local_logits: this rank's slice, (N, K_local) or (N, K_local, d1, ...), e.g. the output of a
            column-parallel LM head.
        target: class indices in the *global* vocabulary, (N,) or (N, d1, ...), the same on every rank.
        label_smoothing: eps, a float at most 1 or a per-sample tensor with the target's shape.
        weight: (K,) class weights for the whole vocabulary; each rank uses its columns.
        group: the process group over which the vocabulary is split (the tensor-parallel group);
            ``None`` is the default group.
        ignore_index: targets equal to it contribute nothing, as in :func:`labelsmooth.cross_entropy`.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``; mean divides by the summed ``w_y`` of
            non-ignored rows (0 when every target is ignored).
        distribution: ``"uniform"``, ``"non_target"``, a (K,) prior or a (K, K) class-conditional
            tensor, given whole; each rank uses its columns.
        z_loss: adds ``z_loss * lse**2`` per row, with the global lse.
        return_parts: return ``LossParts(loss, nll, smooth)`` (with ``z_loss`` and ``accuracy``
            attributes), reduced the same way; the accuracy costs two all-reduces of (N,) vectors.
        validate_args: check tensor contents (target range against K, priors, eps, and that the
            ranks' targets agree); one more host sync.

    Example (one rank, so the slice is the whole vocabulary; see examples/vocab_parallel.py for
    ``torchrun --nproc-per-node 2``):
        >>> import torch, torch.distributed as dist, labelsmooth
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
        >>> target = torch.tensor([0, 2])
        >>> labelsmooth.distributed.vocab_parallel_cross_entropy(logits, target, 0.1)
        tensor(0.9547)
        >>> labelsmooth.cross_entropy(logits, target, label_smoothing=0.1)
        tensor(0.9547)
        >>> dist.destroy_process_group()
    """
    check_logits(local_logits, "local_logits")
    check_reduction(reduction)
    if local_logits.dim() < 2:
        raise ValueError(f"local_logits must have shape (N, K_local) or (N, K_local, d1, ...), "
                         f"got shape {tuple(local_logits.shape)}")
    check_index_target(target, local_logits.shape[:1] + local_logits.shape[2:],
                       unsupported_by="by the vocab-parallel loss",
                       shape_source=f"local_logits {tuple(local_logits.shape)} without its class dimension")
    check_logit_options(None, z_loss)
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("vocab_parallel_cross_entropy needs an initialized process group "
                           "(torch.distributed.init_process_group, e.g. under torchrun)")
    # Argument checks every rank fails alike come before the collectives start.
    check_label_smoothing(label_smoothing, target.shape, None)
    offset, sizes = _vocab_offset(local_logits, target, group, validate_args)
    num_classes, local_size = sum(sizes), local_logits.shape[1]
    check_class_weight(weight, num_classes)
    targets = prepare_class_targets(target, num_classes, ignore_index=ignore_index,
                                    label_smoothing=label_smoothing, distribution=distribution,
                                    weight=weight, dtype=accumulation_dtype(local_logits.dtype),
                                    device=local_logits.device, validate_args=validate_args,
                                    return_parts=return_parts, reduction=reduction)
    local_index = targets.target - offset
    owned = targets.valid & (local_index >= 0) & (local_index < local_size)
    local_target = torch.where(owned, local_index, torch.zeros_like(local_index))
    rows = to_rows(local_logits, local_size)
    statistics = _local_row_statistics(rows, local_target, targets.target, targets.smoothing, offset, return_parts)
    lse, target_logit, dot = _AllReduceRowStatistics.apply(*statistics[:3], owned, group)
    prediction = _global_prediction(rows, statistics[3], offset, num_classes, group) if return_parts else None
    return class_target_loss(lse, target_logit, dot, targets, weight=weight, z_loss=z_loss,
                             reduction=reduction, dtype=local_logits.dtype, return_parts=return_parts,
                             prediction=prediction)
