"""torchmetrics / Lightning: the streaming calibration errors as ``torchmetrics.Metric`` subclasses.

    from labelsmooth.integrations.torchmetrics import CalibrationError
    self.val_ece = CalibrationError(n_bins=15, from_logits=True)      # in a LightningModule
    self.val_ece.update(logits, target); self.log("val/ece", self.val_ece)

Each metric keeps per-bin sums (sample count, summed confidence, summed outcome) of equal-width
bins, memory O(bins), declared as states with ``dist_reduce_fx="sum"``: torchmetrics adds them over
the processes before ``compute()``, so every process gets the error of the whole data set, equal
to :func:`labelsmooth.calibration.expected_calibration_error` (or
:func:`~labelsmooth.calibration.classwise_calibration_error`) on all the samples at once.
torchmetrics' own ``MulticlassCalibrationError`` keeps every sample's confidence instead (memory
O(N), gathered across processes); its bins put a confidence on an edge in the upper bin, these in
the lower one (see :mod:`labelsmooth.calibration.metrics`).

Importing this module imports torchmetrics (``pip install torchmetrics``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from labelsmooth.calibration import BinStatistics, bin_statistics
from labelsmooth.calibration.metrics import NORMS, check_probabilities, top_label

from . import require

torchmetrics = require("torchmetrics", "labelsmooth.integrations.torchmetrics", "torchmetrics")

__all__ = ["CalibrationError", "ClasswiseCalibrationError"]


class _BinnedCalibrationError(torchmetrics.Metric):
    """Per-bin sums of G groups of confidences (G, n_bins), and their error averaged over groups."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    count: Tensor
    confidence_sum: Tensor
    outcome_sum: Tensor

    def __init__(self, groups: int, n_bins: int, norm: str, from_logits: bool, validate_args: bool,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        bin_statistics(torch.zeros(1, 1), torch.zeros(1, 1), n_bins)  # checks n_bins
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {sorted(NORMS)}, got {norm!r}")
        self.n_bins, self.norm, self.from_logits, self.validate_args = n_bins, norm, from_logits, validate_args
        for name in ("count", "confidence_sum", "outcome_sum"):
            self.add_state(name, torch.zeros(groups, n_bins, dtype=torch.float64), dist_reduce_fx="sum")

    def groups(self, probs: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Confidences and 0/1 outcomes, each (G, N), of checked probabilities (N, K)."""
        raise NotImplementedError

    def update(self, probs: Tensor, target: Tensor) -> None:
        """Add a batch: ``probs`` (N, K) probabilities (logits with ``from_logits``), ``target`` (N,)."""
        probs, target = check_probabilities(probs, target, from_logits=self.from_logits,
                                            validate_args=self.validate_args)
        stats = bin_statistics(*self.groups(probs, target), self.n_bins, "width")
        self.count += stats.count.to(self.count.device)
        self.confidence_sum += stats.confidence.to(self.count.device)
        self.outcome_sum += stats.outcome.to(self.count.device)

    def compute(self) -> Tensor:
        if float(self.count.sum()) == 0:
            raise ValueError(f"{type(self).__name__}.compute() needs at least one update() with samples")
        return NORMS[self.norm](BinStatistics(self.count, self.confidence_sum, self.outcome_sum)).mean()


class CalibrationError(_BinnedCalibrationError):
    """Top-label calibration error over equal-width bins: ECE (``norm="l1"``), RMS (``"l2"``), MCE (``"max"``).

    ``sum_b (n_b / N) |acc_b - conf_b|`` for l1 over everything seen since the last ``reset()``,
    equal to :func:`labelsmooth.calibration.expected_calibration_error` on all of it.

    >>> metric = CalibrationError(n_bins=5)
    >>> metric.update(torch.tensor([[0.9, 0.1], [0.8, 0.2]]), torch.tensor([0, 1]))
    >>> metric.update(torch.tensor([[0.3, 0.7]]), torch.tensor([1]))
    >>> round(metric.compute().item(), 4)
    0.2
    """

    def __init__(self, n_bins: int = 15, norm: str = "l1", *, from_logits: bool = False,
                 validate_args: bool = True, **kwargs) -> None:
        super().__init__(1, n_bins, norm, from_logits, validate_args, **kwargs)

    def groups(self, probs: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        confidence, correct = top_label(probs, target)
        return confidence.unsqueeze(0), correct.unsqueeze(0)


class ClasswiseCalibrationError(_BinnedCalibrationError):
    """Class-wise calibration error (Kull et al. 2019), the mean over classes of each class's error.

    Class k is scored as a binary forecaster (confidence ``p_k``, outcome ``[y == k]``) over
    equal-width bins; equal to :func:`labelsmooth.calibration.classwise_calibration_error`.

    >>> metric = ClasswiseCalibrationError(num_classes=2, n_bins=5)
    >>> metric.update(torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]]), torch.tensor([0, 1, 1]))
    >>> round(metric.compute().item(), 4)
    0.3667
    """

    def __init__(self, num_classes: int, n_bins: int = 15, norm: str = "l1", *, from_logits: bool = False,
                 validate_args: bool = True, **kwargs) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        super().__init__(num_classes, n_bins, norm, from_logits, validate_args, **kwargs)
        self.num_classes = num_classes

    def groups(self, probs: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        if probs.shape[1] != self.num_classes:
            raise ValueError(f"probs must have {self.num_classes} columns (num_classes), "
                             f"got shape {tuple(probs.shape)}")
        outcome = torch.nn.functional.one_hot(target, self.num_classes).to(probs.dtype)
        return probs.T, outcome.T
