"""The torch tiles of :func:`labelsmooth.linear_cross_entropy` (``impl="chunked"``, CPU and GPU).

An LM head computes ``z = h W^T + b`` (N tokens x V vocabulary) and then the loss; at N = 32k,
V = 128k the logits alone take 8-16 GB. Here the logits exist one *tile* at a time (a chunk of
tokens x a block of the vocabulary). The loss itself is the core's: this module computes the row
statistics ``(lse, x_y, dot)`` of :mod:`labelsmooth.engine` tile by tile and hands them to
``combine_row_statistics``, so class weights, every distribution, per-sample eps, z-loss,
ignore_index and the reductions are exactly those of :func:`labelsmooth.cross_entropy`.

Derivation. For a row h (one token) with target y, ``z_c = h . W_c + b_c``, ``p = softmax(z)`` and
the smoothing row ``r_c = w_c u(c | y)`` (class weights folded in: ``Smoothing.vector``, or row y
of ``Smoothing.matrix``), the statistics are

    lse = log sum_c exp z_c,    x_y = z_y,    dot = sum_c r_c z_c = h . (r W) + r . b

so ``dot`` needs the projection ``P = R W`` and ``R b`` ((1, D) for a shared distribution, (K, D)
for a class-conditional one; R is the (1 or K, V) table of rows r), never the logits. For the
upstream gradients (g_lse, g_xy, g_dot) of the three statistics (from the core's combination,
whatever the reduction; ``non_target`` is expressed there through x_y and lse):

    dL/dz_{n,c} = g_lse_n p_{n,c} + g_xy_n [c == y_n] + g_dot_n r_{n,c}
                  (softmax, dense)  (one-hot, sparse)   (smoothing, dense but of low rank)

The first two parts go through the tile: ``dh = dZ W``, ``dW = dZ^T h``, ``db = sum_n dZ``. The
third is ``g_dot (outer) r``, of rank one (at most K for a class-conditional table), so

    dh_n += g_dot_n P[y_n],    dW += R^T G,    db += R^T g,
    G[k] = sum of g_dot_n h_n over the rows n that use row k of R,   g[k] = the same sum of g_dot_n

costs O(N D + V D) (plus O(K^2 D) once for a (K, K) table) instead of O(N V D).

Softcap ``s = c tanh(z / c)`` replaces z in the statistics; ``ds/dz = 1 - tanh^2`` multiplies every
entry, so the smoothing part is dense again and is formed inside the tile (still exact).

Two schedules, the same numbers:
- gradient in the forward pass (Liger-style; 3 matmuls per tile): when the loss is one scalar
  (``reduction`` "mean" or "sum", no ``return_parts``), a gradient is needed and the tiles span the
  whole vocabulary, g_lse, g_xy, g_dot are known as soon as a token chunk's lse is, so the
  gradients are formed right away and backward only scales them by the upstream scalar;
- recompute (4 matmuls): otherwise the forward keeps only (lse, x_y, dot) and backward recomputes
  each tile's logits (vocabulary blocks outermost; blocks are combined by an online
  log-sum-exp in the forward pass).

Filtering (``filter_eps``, after Cut Cross-Entropy): a block of ``FILTER_BLOCK`` vocabulary columns
is left out of a tile's gradient matmuls when every softmax value in it is below ``filter_eps``
for the whole token chunk and it holds none of the chunk's targets. Only ``g_lse p`` is dropped
there (the one-hot and smoothing parts stay exact), so per row the dropped part of dL/dz has L1
norm at most ``|g_lse_n| m_n``, ``m_n = sum_c p_{n,c} [p_{n,c} < filter_eps] <= min(1, V filter_eps)``:
``||error of dh_n|| <= |g_lse_n| m_n max_c ||W_c||`` and
``|error of dW_{c,d}| <= sum_n |g_lse_n| p_{n,c} [p_{n,c} < filter_eps] |h_{n,d}|``. The loss value is
never filtered. Not offered with softcap, whose dense part has no closed form.

Memory: one tile (about ``BYTES_PER_TILE_ELEMENT`` bytes per element) plus fp32 accumulators:
dh (N, D) and dW, of one vocabulary block (recompute) or whole (gradient in forward; for fp32 /
fp64 weights the accumulator is the gradient itself). bf16 / fp16 gradients are summed in fp32,
only the per-tile matmuls run in the input dtype. No N x V tensor is ever kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..engine import (
    ClassTargets,
    LossParts,
    accumulation_dtype,
    combine_row_statistics,
    reduce_parts,
    reduce_rows,
    row_correct,
    single_backward,
    update_running_argmax,
)

__all__ = ["TileOptions", "chunked_linear_cross_entropy", "gradients_formed_in_forward", "plan_tiles"]

# Memory for one tile of logits, by device type, and the bytes one tile element costs at peak: fp32
# logits, turned in place into the softmax and then the gradient (4), plus a low-precision copy
# for the matmul or the columns kept by filtering (up to 4). Measured on CPU, fp32: about 5.
DEFAULT_TILE_BYTES = {"cpu": 64 * 2**20, "cuda": 256 * 2**20}
BYTES_PER_TILE_ELEMENT = 8
# Granularity of gradient filtering, in vocabulary columns.
FILTER_BLOCK = 128


class TileOptions(NamedTuple):
    softcap: float | None
    filter_eps: float | None
    token_chunk: int
    vocab_block: int


def plan_tiles(num_tokens: int, vocab: int, dim: int, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu", chunk_size: int | None = None,
               vocab_chunk_size: int | None = None) -> tuple[int, int]:
    """(tokens per chunk, vocabulary block) of the tiles, from a memory budget.

    With ``budget = DEFAULT_TILE_BYTES[device type]``:
    - vocabulary block: ``vocab_chunk_size``; else all of V for fp32 / fp64 weights (dW is summed
      in place); else (bf16 / fp16) ``budget // (4 D)`` columns, so that the block's fp32 dW
      accumulator fits the budget too;
    - token chunk: ``chunk_size``, else ``budget // (vocabulary block * BYTES_PER_TILE_ELEMENT)``;
    each at least 1 and at most N (V).

    >>> plan_tiles(8192, 32768, 512)                               # 64 MiB / (32768 * 8 B)
    (256, 32768)
    >>> plan_tiles(16384, 128256, 4096, torch.bfloat16, "cuda")    # 256 MiB / (4096 * 4 B) columns
    (2048, 16384)
    >>> plan_tiles(10, 50, 8, chunk_size=4, vocab_chunk_size=16)
    (4, 16)
    """
    budget = DEFAULT_TILE_BYTES.get(torch.device(device).type, DEFAULT_TILE_BYTES["cuda"])
    if vocab_chunk_size is None and accumulation_dtype(dtype) != dtype:
        vocab_chunk_size = max(1, budget // (4 * dim))
    vocab_block = min(vocab_chunk_size or vocab, vocab)
    token_chunk = chunk_size or max(1, budget // (vocab_block * BYTES_PER_TILE_ELEMENT))
    return min(token_chunk, max(num_tokens, 1)), vocab_block


# 1. Tile helpers ------------------------------------------------------------------------------------


def _spans(length: int, step: int) -> Iterator[tuple[int, int]]:
    return ((start, min(start + step, length)) for start in range(0, length, step))


def _local_targets(target: Tensor, start: int, stop: int) -> tuple[Tensor, Tensor]:
    """Which targets fall in columns [start, stop), and their column there (clamped when not)."""
    inside = (target >= start) & (target < stop)
    return inside, (target - start).clamp(0, stop - start - 1).unsqueeze(1)


def _softmax_(logits: Tensor) -> Tensor:
    """Turns a 2-D tile into its row softmax in place; returns the rows' log-sum-exp."""
    row_max = logits.amax(1, keepdim=True)
    sums = logits.sub_(row_max).exp_().sum(1, keepdim=True)
    logits.div_(sums)
    return sums.log_().add_(row_max).squeeze(1)


def _per_row(table: Tensor, target: Tensor) -> Tensor:
    """Row ``target[n]`` of ``table`` for each n; a one-row table (a shared distribution) is broadcast."""
    return table.expand(len(target), *table.shape[1:]) if table.shape[0] == 1 else table[target]


def _add_per_row(accumulator: Tensor, target: Tensor, values: Tensor) -> None:
    """``accumulator[target[n]] += values[n]``, the transpose of :func:`_per_row`."""
    if accumulator.shape[0] == 1:
        accumulator += values.sum(0, keepdim=True)
    else:
        accumulator.index_add_(0, target, values)


def _add_columns(accumulator: Tensor, columns: Tensor | None, values: Tensor) -> None:
    """``accumulator[columns] += values`` (all rows when ``columns`` is None), in its own dtype."""
    if columns is None:
        accumulator += values
    else:
        accumulator.index_add_(0, columns, values.to(accumulator.dtype))


def _add_product(accumulator: Tensor, columns: Tensor | None, a: Tensor, b: Tensor) -> None:
    """``accumulator[columns] += a @ b``; in place (no product buffer) when the dtypes agree."""
    if columns is None and a.dtype == accumulator.dtype:
        accumulator.addmm_(a, b)
    else:
        _add_columns(accumulator, columns, a @ b)


def _kept_columns(softmax: Tensor, inside: Tensor, local: Tensor, filter_eps: float) -> Tensor:
    """Columns of the tile in ``FILTER_BLOCK`` blocks that hold a softmax value >= filter_eps or a target."""
    column_max = softmax.amax(0)
    target_mark = torch.where(inside, torch.inf, 0.0).to(column_max.dtype)
    column_max.scatter_reduce_(0, local.squeeze(1), target_mark, reduce="amax")
    num_blocks = -(-len(column_max) // FILTER_BLOCK)
    block_max = F.pad(column_max, (0, num_blocks * FILTER_BLOCK - len(column_max)))
    kept = block_max.view(num_blocks, FILTER_BLOCK).amax(1) >= filter_eps
    return kept.repeat_interleave(FILTER_BLOCK)[: len(column_max)].nonzero().squeeze(1)


@dataclass
class _Gradients:
    """Accumulators: dh and db in ``accumulation`` (fp32 / fp64), dW in W's dtype (summed per block in
    fp32, see :meth:`weight_block`), and the closed-form smoothing sums G (R, D) and g (R,)."""

    accumulation: torch.dtype
    hidden: Tensor | None
    weight: Tensor | None
    bias: Tensor | None
    smoothing_hidden: Tensor | None
    smoothing_sum: Tensor | None

    def weight_block(self, v0: int, v1: int) -> Tensor | None:
        """Where rows [v0, v1) of dW are summed: dW itself when fp32 / fp64, else an fp32 buffer."""
        if self.weight is None or self.weight.dtype == self.accumulation:
            return None if self.weight is None else self.weight[v0:v1]
        return torch.zeros(v1 - v0, self.weight.shape[1], dtype=self.accumulation, device=self.weight.device)

    def store_weight_block(self, v0: int, v1: int, block: Tensor | None) -> None:
        if block is not None and block.dtype != self.weight.dtype:
            self.weight[v0:v1] = block


# 2. The head, tile by tile ---------------------------------------------------------------------------


@dataclass
class _Head:
    """One call's LM head and targets, cut into tiles; both autograd Functions work through it.

    ``rows`` is the (R, V) smoothing table R (R = 1 for a shared distribution, V for a
    class-conditional one), or None when the smoothing term is not needed (dot = 0).
    """

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None
    target: Tensor
    rows: Tensor | None
    options: TileOptions

    @property
    def acc(self) -> torch.dtype:
        return accumulation_dtype(self.hidden.dtype)

    @property
    def closed_form(self) -> bool:
        """The smoothing dot and its gradient by the projection P (no softcap), not in the tiles."""
        return self.rows is not None and self.options.softcap is None

    def chunks(self) -> Iterator[tuple[int, int]]:
        return _spans(len(self.hidden), self.options.token_chunk)

    def blocks(self) -> Iterator[tuple[int, int]]:
        return _spans(len(self.weight), self.options.vocab_block)

    def logits(self, n0: int, n1: int, v0: int, v1: int) -> tuple[Tensor, Tensor | None]:
        """A tile of (softcapped) logits in the accumulation dtype, and ``tanh`` when softcapped."""
        bias = None if self.bias is None else self.bias[v0:v1]
        z = F.linear(self.hidden[n0:n1], self.weight[v0:v1], bias).to(self.acc)
        if self.options.softcap is None:
            return z, None
        tanh = z.div_(self.options.softcap).tanh_()
        return tanh * self.options.softcap, tanh

    def tile_statistics(self, logits: Tensor, n0: int, n1: int, v0: int,
                        v1: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """(lse, x_y, dot) of a tile, dot only when formed in the tile; the tile becomes its softmax."""
        target = self.target[n0:n1]
        inside, local = _local_targets(target, v0, v1)
        target_logit = torch.where(inside, logits.gather(1, local).squeeze(1), 0.0)
        dot = None
        if self.rows is not None and not self.closed_form:
            dot = (logits * _per_row(self.rows[:, v0:v1], target)).sum(1)
        return _softmax_(logits), target_logit, dot

    def projection(self) -> tuple[Tensor, Tensor]:
        """``P = R W`` (R, D) and ``R b`` (R,), summed block by block in the accumulation dtype."""
        projection = torch.zeros(len(self.rows), self.hidden.shape[1], dtype=self.acc, device=self.hidden.device)
        offset = torch.zeros(len(self.rows), dtype=self.acc, device=self.hidden.device)
        for v0, v1 in self.blocks():
            projection.addmm_(self.rows[:, v0:v1], self.weight[v0:v1].to(self.acc))
            if self.bias is not None:
                offset.addmv_(self.rows[:, v0:v1], self.bias[v0:v1].to(self.acc))
        return projection, offset

    def closed_form_dot(self, projection: Tensor, offset: Tensor, n0: int, n1: int) -> Tensor:
        target = self.target[n0:n1]
        return (self.hidden[n0:n1].to(self.acc) * _per_row(projection, target)).sum(1) + _per_row(offset, target)

    def new_gradients(self, need_hidden: bool, need_weight: bool, need_bias: bool) -> _Gradients:
        def zeros(*shape):
            return torch.zeros(*shape, dtype=self.acc, device=self.hidden.device)

        (num_tokens, dim), vocab = self.hidden.shape, len(self.weight)
        weight = None
        if need_weight:  # summed in place when fp32 / fp64, else written block by block
            weight = torch.zeros_like(self.weight) if self.weight.dtype == self.acc else torch.empty_like(self.weight)
        closed = self.closed_form
        return _Gradients(self.acc, zeros(num_tokens, dim) if need_hidden else None, weight,
                          zeros(vocab) if need_bias else None,
                          zeros(len(self.rows), dim) if closed else None,
                          zeros(len(self.rows)) if closed else None)

    def add_tile_gradient(self, grads: _Gradients, weight_block: Tensor | None, softmax: Tensor,
                          tanh: Tensor | None, n0: int, n1: int, v0: int, v1: int,
                          upstream: tuple[Tensor, Tensor, Tensor]) -> None:
        """dZ = g_lse p + g_xy onehot (+ g_dot r, softcapped) of one tile into dh, dW and db.

        ``softmax`` (the tile's p, overwritten by dZ); ``upstream`` = the chunk's (g_lse, g_xy, g_dot).
        """
        g_lse, g_xy, g_dot = upstream
        target = self.target[n0:n1]
        inside, local = _local_targets(target, v0, v1)
        filter_eps = self.options.filter_eps
        columns = None if filter_eps is None else _kept_columns(softmax, inside, local, filter_eps)
        grad = softmax.mul_(g_lse.unsqueeze(1))
        grad.scatter_add_(1, local, torch.where(inside, g_xy, 0.0).unsqueeze(1))
        if self.rows is not None and not self.closed_form:
            grad.addcmul_(g_dot.unsqueeze(1), _per_row(self.rows[:, v0:v1], target))
        if tanh is not None:
            grad.mul_(1 - tanh.square_())
        weight = self.weight[v0:v1]
        if columns is not None:
            grad, weight = grad.index_select(1, columns), weight.index_select(0, columns)
        grad_low = grad.to(self.hidden.dtype)
        if grads.hidden is not None:
            _add_product(grads.hidden[n0:n1], None, grad_low, weight)
        if weight_block is not None:
            _add_product(weight_block, columns, grad_low.T, self.hidden[n0:n1])
        if grads.bias is not None:
            _add_columns(grads.bias[v0:v1], columns, grad.sum(0))

    def add_recomputed_tile_gradient(self, grads: _Gradients, weight_block: Tensor | None, lse: Tensor,
                                     n0: int, n1: int, v0: int, v1: int,
                                     upstream: tuple[Tensor, Tensor, Tensor]) -> None:
        """:meth:`add_tile_gradient` of a recomputed tile, its softmax ``exp(z - lse)`` from the rows' lse."""
        logits, tanh = self.logits(n0, n1, v0, v1)
        softmax = logits.sub_(lse.unsqueeze(1)).exp_()
        self.add_tile_gradient(grads, weight_block, softmax, tanh, n0, n1, v0, v1, upstream)

    def add_chunk_loss_and_gradient(self, grads: _Gradients, weight_block: Tensor | None,
                                    projection: Tensor | None, offset: Tensor | None, n0: int, n1: int,
                                    chunk_loss: Callable[..., Tensor]) -> Tensor:
        """One whole-vocabulary tile: its rows' loss (returned) and, at once, its gradients."""
        vocab = len(self.weight)
        logits, tanh = self.logits(n0, n1, 0, vocab)
        lse, target_logit, dot = self.tile_statistics(logits, n0, n1, 0, vocab)  # logits -> softmax
        if self.closed_form:
            dot = self.closed_form_dot(projection, offset, n0, n1)
        elif dot is None:
            dot = torch.zeros_like(lse)
        with torch.enable_grad():  # the upstream gradients of this chunk's statistics
            statistics = [s.requires_grad_() for s in (lse, target_logit, dot)]
            loss = chunk_loss(*statistics, n0, n1)
            upstream = torch.autograd.grad(loss, statistics, materialize_grads=True)
        self.add_tile_gradient(grads, weight_block, logits, tanh, n0, n1, 0, vocab, upstream)
        if self.closed_form:
            self.add_closed_form_rows(grads, projection, n0, n1, upstream[2])
        return loss.detach()

    def add_closed_form_rows(self, grads: _Gradients, projection: Tensor, n0: int, n1: int,
                             g_dot: Tensor) -> None:
        """The smoothing part's rows: dh_n += g_dot_n P[y_n], G += g_dot_n h_n, g += g_dot_n."""
        target, g = self.target[n0:n1], g_dot.unsqueeze(1)
        _add_per_row(grads.smoothing_hidden, target, g * self.hidden[n0:n1].to(self.acc))
        _add_per_row(grads.smoothing_sum, target, g_dot)
        if grads.hidden is not None:
            grads.hidden[n0:n1] += g * _per_row(projection, target)

    def add_closed_form_block(self, grads: _Gradients, weight_block: Tensor | None, v0: int, v1: int) -> None:
        """The smoothing part's columns: dW += R^T G and db += R^T g on one vocabulary block."""
        if weight_block is not None:
            weight_block.addmm_(self.rows[:, v0:v1].T, grads.smoothing_hidden)
        if grads.bias is not None:
            grads.bias[v0:v1] += self.rows[:, v0:v1].T @ grads.smoothing_sum

    def finish(self, grads: _Gradients, scale: Tensor | None = None) -> tuple:
        """(dh, dW, db) in the inputs' dtypes, optionally times the upstream scalar ``scale``."""
        out = []
        for grad, like in ((grads.hidden, self.hidden), (grads.weight, self.weight), (grads.bias, self.bias)):
            if grad is not None and scale is not None:
                grad = grad.mul_(scale)
            out.append(None if grad is None else grad.to(like.dtype))
        return tuple(out)


# 3. Two schedules ------------------------------------------------------------------------------------


class _RecomputedStatistics(torch.autograd.Function):
    """(lse, x_y, dot) per row (and with ``predictions`` each row's arg-max, int64); backward
    recomputes each tile (vocabulary blocks outermost)."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor,
                rows: Tensor | None, options: TileOptions, predictions: bool):
        head = _Head(hidden, weight, bias, target, rows, options)
        lse = torch.full((len(hidden),), -torch.inf, dtype=head.acc, device=hidden.device)
        target_logit, dot = torch.zeros_like(lse), torch.zeros_like(lse)
        best, prediction = torch.full_like(lse, -torch.inf), torch.zeros_like(lse, dtype=torch.int64)
        for v0, v1 in head.blocks():
            for n0, n1 in head.chunks():
                logits = head.logits(n0, n1, v0, v1)[0]
                if predictions:
                    update_running_argmax(best[n0:n1], prediction[n0:n1], logits, v0)
                tile_lse, tile_target_logit, tile_dot = head.tile_statistics(logits, n0, n1, v0, v1)
                del logits  # the tile is not kept beside the next one
                lse[n0:n1] = torch.logaddexp(lse[n0:n1], tile_lse)  # online log-sum-exp over blocks
                target_logit[n0:n1] += tile_target_logit
                if tile_dot is not None:
                    dot[n0:n1] += tile_dot
        projection = None
        if head.closed_form:
            projection, offset = head.projection()
            for n0, n1 in head.chunks():
                dot[n0:n1] = head.closed_form_dot(projection, offset, n0, n1)
        ctx.save_for_backward(hidden, weight, bias, target, rows, lse, projection)
        ctx.options = options
        if not predictions:
            return lse, target_logit, dot
        ctx.mark_non_differentiable(prediction)
        return lse, target_logit, dot, prediction

    @staticmethod
    @single_backward("linear_cross_entropy")
    def backward(ctx, grad_lse: Tensor, grad_target_logit: Tensor, grad_dot: Tensor, *unused):
        hidden, weight, bias, target, rows, lse, projection = ctx.saved_tensors
        head = _Head(hidden, weight, bias, target, rows, ctx.options)
        grads = head.new_gradients(*ctx.needs_input_grad[:3])
        if head.closed_form:
            for n0, n1 in head.chunks():
                head.add_closed_form_rows(grads, projection, n0, n1, grad_dot[n0:n1])
        for v0, v1 in head.blocks():
            weight_block = grads.weight_block(v0, v1)
            for n0, n1 in head.chunks():
                upstream = (grad_lse[n0:n1], grad_target_logit[n0:n1], grad_dot[n0:n1])
                head.add_recomputed_tile_gradient(grads, weight_block, lse[n0:n1], n0, n1, v0, v1, upstream)
            if head.closed_form:
                head.add_closed_form_block(grads, weight_block, v0, v1)
            grads.store_weight_block(v0, v1, weight_block)
        return (*head.finish(grads), None, None, None, None)


def gradients_formed_in_forward(ctx) -> tuple:
    """``ctx.grads``, the gradients a forward pass formed, handed to backward once: they are then
    scaled in place, so a second backward through the same loss raises instead of scaling again."""
    if ctx.grads is None:
        raise RuntimeError("linear_cross_entropy: backward through the same loss twice is not "
                           "supported (its gradients were formed in forward and are scaled in place)")
    grads, ctx.grads = ctx.grads, None
    return grads


class _GradientInForward(torch.autograd.Function):
    """The scalar loss; its gradients are formed in the forward pass (whole-vocabulary tiles).

    ``chunk_loss(lse, x_y, dot, n0, n1)`` is the loss of rows [n0, n1) as a 0-dim tensor,
    differentiable in the three statistics; the per-row upstream gradients come from it.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor,
                rows: Tensor | None, options: TileOptions, chunk_loss: Callable[..., Tensor]):
        head = _Head(hidden, weight, bias, target, rows, options)
        grads = head.new_gradients(*ctx.needs_input_grad[:3])
        vocab = len(weight)
        weight_block = grads.weight_block(0, vocab)
        projection, offset = head.projection() if head.closed_form else (None, None)
        total = torch.zeros((), dtype=head.acc, device=hidden.device)
        for n0, n1 in head.chunks():
            total += head.add_chunk_loss_and_gradient(grads, weight_block, projection, offset, n0, n1, chunk_loss)
        if head.closed_form:
            head.add_closed_form_block(grads, weight_block, 0, vocab)
        grads.store_weight_block(0, vocab, weight_block)
        ctx.head, ctx.grads = head, grads
        return total

    @staticmethod
    @single_backward("linear_cross_entropy")
    def backward(ctx, grad_loss: Tensor):
        grads = gradients_formed_in_forward(ctx)
        return (*ctx.head.finish(grads, grad_loss), None, None, None, None)


# 4. The loss over the tiles ------------------------------------------------------------------------


def chunked_linear_cross_entropy(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: ClassTargets, *,
                                 class_weight: Tensor | None, z_loss: float, softcap: float | None,
                                 filter_eps: float | None, reduction: str, return_parts: bool, needs_grad: bool,
                                 chunk_size: int | None, vocab_chunk_size: int | None,
                                 dtype: torch.dtype) -> Tensor | LossParts:
    """The loss of ``hidden`` (N, D) against the head ``weight`` (V, D) / ``bias`` (V,), all in one
    compute dtype, over tiles from :func:`plan_tiles`; ``targets`` the resolved targets, ``dtype``
    the loss's."""
    vocab = weight.shape[0]
    used_smoothing, row_eps = targets.smoothing, targets.label_smoothing

    def row_parts(lse, target_logit, dot, rows=slice(None)):
        return combine_row_statistics(
            lse, target_logit, dot, target=targets.target[rows], valid=targets.valid[rows],
            smoothing=used_smoothing, weight=class_weight,
            label_smoothing=row_eps[rows] if isinstance(row_eps, Tensor) and row_eps.dim() else row_eps,
            z_loss=z_loss)

    table = None
    if used_smoothing is not None:
        table = used_smoothing.matrix if used_smoothing.matrix is not None else used_smoothing.vector.unsqueeze(0)
    options = TileOptions(softcap, filter_eps, *plan_tiles(len(targets.target), vocab, hidden.shape[-1],
                                                           hidden.dtype, hidden.device, chunk_size,
                                                           vocab_chunk_size))
    if needs_grad and reduction != "none" and not return_parts and options.vocab_block == vocab:
        def chunk_loss(lse, target_logit, dot, n0, n1):
            return reduce_rows(row_parts(lse, target_logit, dot, slice(n0, n1))[0], reduction,
                               targets.denominator, None)

        loss = _GradientInForward.apply(hidden, weight, bias, targets.target, table, options, chunk_loss)
        return loss.to(dtype)
    lse, target_logit, dot, *prediction = _RecomputedStatistics.apply(hidden, weight, bias, targets.target, table,
                                                                      options, return_parts)
    return reduce_parts(row_parts(lse, target_logit, dot), reduction, targets.denominator, targets.shape, dtype,
                        return_parts, correct=row_correct(prediction[0], targets) if prediction else None,
                        valid=targets.valid)
