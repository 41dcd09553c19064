"""Fused linear + label-smoothed cross-entropy that never builds the (N, V) logits: the entry point.

An LM head computes ``z = h W^T + b`` (N tokens x V vocabulary) and then the loss; at N = 32k,
V = 128k the logits alone take 8-16 GB. :func:`linear_cross_entropy` checks its arguments,
resolves the targets once with the core (``engine.prepare_class_targets``: ignore_index, class
weights and the mean's denominator, every distribution, per-sample eps), settles the dtypes the
matmuls run in (:func:`compute_dtypes`: mixed precision as ``F.linear`` + ``F.cross_entropy``
under autocast give) and hands the head to one of two tilings with the same numbers:

- the torch tiles (``impl="chunked"``, CPU and GPU),
  :mod:`labelsmooth.ops.linear_cross_entropy_chunked`, where the tiling, the closed-form
  smoothing term, the two schedules, filtering and the memory
  budget are derived;
- the Triton tiles (``impl="triton"``, and ``"auto"`` on CUDA where they apply: a scalar loss
  when a gradient is wanted, no ``filter_eps`` / ``vocab_chunk_size``),
  :mod:`labelsmooth.ops.linear_cross_entropy_triton`.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from .._checks import check_class_weight, check_index_target, check_logit_options, check_reduction
from ..engine import LossParts, accumulation_dtype, prepare_class_targets
from ..targets import Distribution
from .linear_cross_entropy_chunked import chunked_linear_cross_entropy, plan_tiles

__all__ = ["compute_dtypes", "linear_cross_entropy", "plan_tiles"]


# 1. Checks of the arguments this entry point adds -------------------------------------------------


def _check_linear_head(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    """hidden (..., D) floating; weight (V, D) and bias (V,) floating, on hidden's device (any
    floating dtypes: mixed precision is computed as :func:`compute_dtypes` says)."""
    if not isinstance(hidden, Tensor) or not hidden.is_floating_point() or hidden.dim() == 0:
        raise ValueError(f"hidden must be a floating tensor of shape (..., D), got "
                         f"{hidden.dtype if isinstance(hidden, Tensor) else type(hidden).__name__}"
                         f"{' (0-dim)' if isinstance(hidden, Tensor) and hidden.dim() == 0 else ''}")
    dim = hidden.shape[-1]
    for name, tensor, shape in (("weight", weight, f"(V, {dim})"), ("bias", bias, "(V,)")):
        if tensor is None and name == "bias":
            continue
        if not isinstance(tensor, Tensor):
            raise ValueError(f"{name} must be a tensor of shape {shape}, got {type(tensor).__name__}")
        if not tensor.is_floating_point() or tensor.device != hidden.device:
            raise ValueError(f"{name} must be a floating tensor on hidden's device ({hidden.device}), "
                             f"got ({tensor.dtype}, {tensor.device})")
    if weight.dim() != 2 or weight.shape[1] != dim or weight.shape[0] == 0:
        raise ValueError(f"weight must have shape (V, {dim}) with V >= 1 (hidden's last dimension is "
                         f"{dim}), got shape {tuple(weight.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must have shape ({weight.shape[0]},), one value per row of weight, "
                         f"got shape {tuple(bias.shape)}")


def compute_dtypes(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[torch.dtype, torch.dtype]:
    """(dtype the matmuls run in, dtype of the loss), as ``F.linear`` + ``F.cross_entropy`` give.

    Under autocast (half-precision operands allowed): the autocast dtype, and an fp32 loss. Else
    the promoted dtype of the operands (bf16 hidden states with an fp32 head: fp32) for both.

    >>> h, w = torch.zeros(2, 4, dtype=torch.bfloat16), torch.zeros(3, 4)
    >>> compute_dtypes(h, w, None)
    (torch.float32, torch.float32)
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     compute_dtypes(h, w, None)
    (torch.bfloat16, torch.float32)
    """
    dtypes = [t.dtype for t in (hidden, weight, bias) if t is not None]
    device_type = hidden.device.type
    if torch.float64 not in dtypes and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type), torch.float32
    promoted = dtypes[0]
    for dtype in dtypes[1:]:
        promoted = torch.promote_types(promoted, dtype)
    return promoted, promoted


def _check_positive_int(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


def _check_options(softcap, z_loss, chunk_size, vocab_chunk_size, filter_eps) -> None:
    check_logit_options(softcap, z_loss)
    _check_positive_int("chunk_size", chunk_size)
    _check_positive_int("vocab_chunk_size", vocab_chunk_size)
    if filter_eps is None:
        return
    if not isinstance(filter_eps, (int, float)) or not 0 < filter_eps < 1:
        raise ValueError(f"filter_eps must be a float in (0, 1) or None, got {filter_eps!r}")
    if softcap is not None:
        raise ValueError("filter_eps cannot be combined with softcap: the softcap makes the smoothing "
                         "gradient dense, so skipping blocks would no longer be exact to filter_eps")


def _use_triton(impl: str, hidden: Tensor, needs_grad: bool, scalar_loss: bool, filter_eps: float | None,
                vocab_chunk_size: int | None) -> bool:
    """Whether the Triton tiles run: ``"triton"`` (where they can), or ``"auto"`` on CUDA when they
    can; ValueError for an unknown impl or what the Triton tiles do not do."""
    if impl not in ("auto", "chunked", "triton"):
        raise ValueError(f"impl must be 'auto', 'chunked' or 'triton', got {impl!r}")
    unsupported = [what for what, present in (
        ("filter_eps", filter_eps is not None), ("vocab_chunk_size", vocab_chunk_size is not None),
        ("a gradient of a loss that is not one scalar (reduction='none' or return_parts=True)",
         needs_grad and not scalar_loss)) if present]
    if impl == "auto":
        return hidden.is_cuda and not unsupported and importlib.util.find_spec("triton") is not None
    if impl == "triton" and unsupported:
        raise ValueError(f"impl='triton' forms the gradient in the forward pass over whole-vocabulary tiles and "
                         f"does not take {unsupported[0]}; use impl='chunked' or 'auto'")
    return impl == "triton"


# 2. The loss --------------------------------------------------------------------------------------


def linear_cross_entropy(hidden: Tensor, weight: Tensor, target: Tensor, bias: Tensor | None = None,
                         ignore_index: int = -100, reduction: str = "mean",
                         label_smoothing: float | Tensor = 0.0, *, class_weight: Tensor | None = None,
                         distribution: Distribution = "uniform", z_loss: float = 0.0,
                         softcap: float | None = None, chunk_size: int | None = None,
                         vocab_chunk_size: int | None = None, filter_eps: float | None = None,
                         impl: str = "auto", return_parts: bool = False,
                         validate_args: bool = True) -> Tensor | LossParts:
    r"""``cross_entropy(F.linear(hidden, weight, bias), target, ...)`` without building the logits.

    Same loss, options and gradients as :func:`labelsmooth.cross_entropy` on the logits
    ``z = hidden @ weight.T + bias``; per row, with class weights w (``class_weight``)::

        loss = (1 - eps) w_y (-log p_y) + eps sum_c w_c u(c | y) (-log p_c) + z_loss lse^2

    Extra memory is one tile of logits plus fp32 gradient accumulators, never N x V.

    Args:
        hidden: (N, D) or (B, T, D), any leading shape; floating.
        weight: (V, D), the LM head as in ``F.linear``. bias: (V,) or None.
        target: class indices with hidden's leading shape; ``ignore_index`` rows count nowhere.
        reduction, label_smoothing, distribution, z_loss, softcap, return_parts, validate_args:
            as in :func:`labelsmooth.cross_entropy`. class_weight: its ``weight``, (V,).
        chunk_size: tokens per tile; None: from a memory budget, see :func:`plan_tiles`.
        vocab_chunk_size: vocabulary columns per tile; None: see :func:`plan_tiles` (all of V for
            fp32 heads). Whole-vocabulary tiles let a scalar loss form its gradient in the forward
            pass (3 matmuls per tile); blocks make the backward recompute the logits (4 matmuls)
            but keep only one block of the fp32 dW accumulator, the default for bf16 / fp16 heads.
        filter_eps: leave vocabulary blocks whose softmax is below it for a whole token chunk out
            of the gradient (Cut Cross-Entropy; its error bounds:
            :mod:`labelsmooth.ops.linear_cross_entropy_chunked`); not with softcap.
        impl: ``"chunked"`` (the torch tiles, CPU and GPU), ``"triton"`` (whole-vocabulary tiles
            through the Triton kernel, :mod:`labelsmooth.ops.linear_cross_entropy_triton`; CUDA,
            a scalar loss when a gradient is wanted, no filter_eps / vocab_chunk_size) or
            ``"auto"`` (Triton on CUDA where it applies, else chunked).

    Mixed precision: hidden, weight and bias may differ in dtype (bf16 hidden states with an fp32
    head); the matmuls run in the dtype :func:`compute_dtypes` names (autocast's under autocast,
    else the promoted one), statistics and gradient sums in fp32, and each gradient comes back
    in its input's dtype, as ``F.linear`` + ``F.cross_entropy`` under autocast give.

    A scalar loss over whole-vocabulary tiles forms its gradients during the forward pass (they
    are held from then on, and a second backward through the same graph raises RuntimeError).

    Example:
        >>> import torch, torch.nn.functional as F, labelsmooth
        >>> g = torch.Generator().manual_seed(0)
        >>> hidden, head = torch.randn(6, 4, generator=g), torch.randn(10, 4, generator=g)
        >>> target = torch.tensor([1, 0, 9, 3, 3, 7])
        >>> labelsmooth.linear_cross_entropy(hidden, head, target, label_smoothing=0.1, chunk_size=4)
        tensor(4.1537)
        >>> F.cross_entropy(F.linear(hidden, head), target, label_smoothing=0.1)
        tensor(4.1537)
    """
    _check_linear_head(hidden, weight, bias)
    check_index_target(target, hidden.shape[:-1], unsupported_by="here",
                       shape_source=f"hidden {tuple(hidden.shape)} without its last dimension")
    check_reduction(reduction)
    vocab = weight.shape[0]
    check_class_weight(class_weight, vocab, "class_weight")
    _check_options(softcap, z_loss, chunk_size, vocab_chunk_size, filter_eps)
    compute, loss_dtype = compute_dtypes(hidden, weight, bias)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    triton = _use_triton(impl, hidden, needs_grad, reduction != "none" and not return_parts, filter_eps,
                         vocab_chunk_size)
    targets = prepare_class_targets(target, vocab, ignore_index=ignore_index, label_smoothing=label_smoothing,
                                    distribution=distribution, weight=class_weight,
                                    dtype=accumulation_dtype(compute), device=hidden.device,
                                    validate_args=validate_args, return_parts=return_parts, reduction=reduction,
                                    weight_name="class_weight")
    with torch.autocast(hidden.device.type, enabled=False):  # the casts below are autocast's
        hidden, weight, bias = (None if t is None else t.to(compute) for t in (hidden, weight, bias))
        hidden_rows = hidden.reshape(-1, hidden.shape[-1])
        if triton:
            from .linear_cross_entropy_triton import triton_linear_cross_entropy

            return triton_linear_cross_entropy(hidden_rows, weight, bias, target.reshape(-1), targets,
                                               ignore_index=ignore_index, class_weight=class_weight, z_loss=z_loss,
                                               softcap=softcap, reduction=reduction, return_parts=return_parts,
                                               chunk_size=chunk_size, dtype=loss_dtype)
        return chunked_linear_cross_entropy(hidden_rows, weight, bias, targets, class_weight=class_weight,
                                            z_loss=z_loss, softcap=softcap, filter_eps=filter_eps,
                                            reduction=reduction, return_parts=return_parts, needs_grad=needs_grad,
                                            chunk_size=chunk_size, vocab_chunk_size=vocab_chunk_size,
                                            dtype=loss_dtype)
