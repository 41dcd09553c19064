"""The streaming calibration error: per-bin sums updated batch by batch, synced across processes.

:class:`CalibrationError` is an ``nn.Module`` whose state lives in non-persistent buffers (as
torchmetrics keeps metric states): it moves with ``.to(device)`` but stays out of
``state_dict()``, so a model checkpoint saved without the metric loads strictly into a model
that holds one, and the other way round.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .metrics import (
    NORMS,
    ArrayLike,
    BinStatistics,
    _check_bins,
    _check_norm,
    bin_statistics,
    check_probabilities,
    top_label,
)

__all__ = ["CalibrationError"]


class CalibrationError(nn.Module):
    """Streaming top-label calibration error over equal-width bins, memory O(n_bins).

    ``update(probs, target)`` adds each batch to per-bin sums (count, confidence, accuracy) kept
    as float64 non-persistent buffers (not in ``state_dict()``); ``compute()`` returns the error
    of everything seen so far with ``norm`` (``"l1"`` ECE, ``"l2"``, ``"max"`` MCE). Equal-mass bins
    need every confidence at once, so they
    are not offered here: use :func:`expected_calibration_error` with ``binning="mass"``.

    When ``torch.distributed`` is initialised, ``sync()`` and ``compute()`` all-reduce the sums
    over ``group`` (all processes by default) without changing the local buffers, so every process
    gets the error of the whole data set and calling them twice does not double count.

    >>> metric = CalibrationError(n_bins=5)
    >>> metric.update(torch.tensor([[0.9, 0.1], [0.8, 0.2]]), torch.tensor([0, 1]))
    >>> metric.update(torch.tensor([[0.3, 0.7]]), torch.tensor([1]))
    >>> round(metric.compute().item(), 4)
    0.2
    """

    count: Tensor
    confidence_sum: Tensor
    accuracy_sum: Tensor

    def __init__(self, n_bins: int = 15, norm: str = "l1", *, from_logits: bool = False,
                 validate_args: bool = True) -> None:
        super().__init__()
        _check_bins(n_bins, "width")
        _check_norm(norm)
        self.n_bins, self.norm = n_bins, norm
        self.from_logits, self.validate_args = from_logits, validate_args
        for name in ("count", "confidence_sum", "accuracy_sum"):
            self.register_buffer(name, torch.zeros(n_bins, dtype=torch.float64), persistent=False)

    def reset(self) -> None:
        for buffer in (self.count, self.confidence_sum, self.accuracy_sum):
            buffer.zero_()

    @torch.no_grad()
    def update(self, probs: ArrayLike, target: ArrayLike) -> None:
        probs, target = check_probabilities(probs, target, from_logits=self.from_logits,
                                            validate_args=self.validate_args)
        confidence, correct = top_label(probs.to(self.count.device), target.to(self.count.device))
        stats = bin_statistics(confidence.unsqueeze(0), correct.unsqueeze(0), self.n_bins, "width")
        self.count += stats.count[0]
        self.confidence_sum += stats.confidence[0]
        self.accuracy_sum += stats.outcome[0]

    def sync(self, group: dist.ProcessGroup | None = None) -> BinStatistics:
        """Per-bin sums over every process of ``group`` (the local sums when not distributed)."""
        stacked = torch.stack([self.count, self.confidence_sum, self.accuracy_sum])
        if dist.is_available() and dist.is_initialized():
            stacked = stacked.clone()
            dist.all_reduce(stacked, op=dist.ReduceOp.SUM, group=group)
        return BinStatistics(*stacked.unsqueeze(1))

    def compute(self, group: dist.ProcessGroup | None = None) -> Tensor:
        stats = self.sync(group)
        if float(stats.count.sum()) == 0:
            raise ValueError("CalibrationError.compute() needs at least one update() with samples")
        return NORMS[self.norm](stats)[0]

    def forward(self, probs: ArrayLike, target: ArrayLike) -> None:
        self.update(probs, target)

    def extra_repr(self) -> str:
        return f"n_bins={self.n_bins}, norm={self.norm!r}, from_logits={self.from_logits}"
