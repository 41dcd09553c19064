"""Online label smoothing (Zhang et al. 2021, "Delving Deep into Label Smoothing").

The smoothing distribution is class-conditional and learned: row ``y`` of a (K, K) matrix is the
mean predicted distribution of the training samples of class ``y`` that the model classified
correctly during the previous epoch. The loss is the class-conditional smoothed cross-entropy::

    loss = (1 - eps) CE(onehot(y), p) + eps CE(S[y], p)

(the paper's ``alpha`` is ``1 - eps``; its default 0.5 is ``label_smoothing=0.5`` here).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import (
    ContentChecks,
    check_class_index_tensor,
    check_class_indices,
    check_distribution_tensor,
    check_ignore_index,
    check_label_smoothing,
    check_logits,
    check_reduction,
    first_offender,
)
from .losses import cross_entropy

__all__ = ["OnlineLabelSmoothing"]


class OnlineLabelSmoothing(nn.Module):
    """Loss module holding a (K, K) smoothing distribution re-estimated once per epoch.

    Call ``update(logits, target)`` on each training batch (or let ``forward`` do it while the
    module is in training mode with ``auto_update=True``) and ``step()`` at the end of the epoch.
    Rows of classes with no correct prediction during the epoch keep their previous value. The
    first epoch uses ``initial`` (default: uniform rows, i.e. ordinary label smoothing).
    With ``validate_args`` (the default) ``update`` refuses non-finite logits and out-of-range
    targets (one host sync per call), so a diverging model cannot poison the distribution.

    Example:
        >>> import torch, labelsmooth
        >>> ols = labelsmooth.OnlineLabelSmoothing(3, label_smoothing=0.5)
        >>> logits, target = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), torch.tensor([0, 2])
        >>> ols.update(logits, target)
        >>> ols.step()
        >>> ols.distribution[0]
        tensor([0.9647, 0.0177, 0.0177])
        >>> ols.distribution[1]  # no correct prediction of class 1 yet: still uniform
        tensor([0.3333, 0.3333, 0.3333])
    """

    distribution: Tensor
    _sums: Tensor
    _counts: Tensor

    def __init__(self, num_classes: int, label_smoothing: float = 0.5, *, initial: Tensor | None = None,
                 reduction: str = "mean", ignore_index: int = -100, auto_update: bool = False,
                 validate_args: bool = True) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        check_reduction(reduction)
        check_ignore_index(ignore_index)
        self.label_smoothing = check_label_smoothing(label_smoothing, torch.Size(), None)
        if initial is None:
            initial = torch.full((num_classes, num_classes), 1.0 / num_classes)
        elif not isinstance(initial, Tensor) or initial.shape != (num_classes, num_classes):
            raise ValueError(f"initial must be a ({num_classes}, {num_classes}) tensor, got "
                             f"{tuple(initial.shape) if isinstance(initial, Tensor) else type(initial).__name__}")
        elif validate_args:
            checks = ContentChecks()
            check_distribution_tensor(initial, num_classes, checks, "initial")
            checks.raise_if_failed()
        self.num_classes, self.reduction, self.ignore_index = num_classes, reduction, ignore_index
        self.auto_update, self.validate_args = auto_update, validate_args
        self.register_buffer("distribution", initial.clone().float())
        self.register_buffer("_sums", torch.zeros(num_classes, num_classes))
        self.register_buffer("_counts", torch.zeros(num_classes))

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        check_logits(input)
        if input.dim() < 2 or input.shape[1] != self.num_classes:
            raise ValueError(f"input must hold logits over num_classes={self.num_classes} classes, shape "
                             f"(N, {self.num_classes}) or (N, {self.num_classes}, d1, ...), got shape "
                             f"{tuple(input.shape)}")
        validate_args = self.validate_args
        if self.auto_update and self.training:
            self.update(input, target)
            validate_args = False  # update checked the targets; the distribution is the module's own
        # Passed in its own dtype: the loss casts it, and checks its row sums at fp32's tolerance.
        return cross_entropy(input, target, None, self.ignore_index, self.reduction, self.label_smoothing,
                             distribution=self.distribution, validate_args=validate_args)

    @torch.no_grad()
    def update(self, logits: Tensor, target: Tensor) -> None:
        """Accumulate the predicted distributions of correctly classified samples, by class."""
        check_logits(logits, "logits")
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must have shape (N, {self.num_classes}), got {tuple(logits.shape)}")
        check_class_index_tensor(target)
        if target.shape != logits.shape[:1]:
            raise ValueError(f"target must have shape ({logits.shape[0]},), got {tuple(target.shape)}")
        if self.validate_args:
            checks = ContentChecks()
            finite = torch.isfinite(logits)
            checks.add(finite.all(), lambda v: f"logits must be finite to update the smoothing distribution "
                                               f"(a NaN or infinite logit would poison its class's row), "
                                               f"got {v}", first_offender(logits, ~finite))
            check_class_indices(target, self.num_classes, self.ignore_index, checks)
            checks.raise_if_failed()
        probs = logits.detach().float().softmax(1)
        correct = (probs.argmax(1) == target) & (target != self.ignore_index)
        y = target[correct].long().to(self._sums.device)
        self._sums.index_add_(0, y, probs[correct].to(self._sums.device))
        self._counts.index_add_(0, y, torch.ones_like(y, dtype=self._counts.dtype))

    @torch.no_grad()
    def step(self) -> None:
        """End of epoch: rows seen get the new mean distribution; accumulators are reset."""
        seen = self._counts > 0
        new_rows = self._sums[seen] / self._counts[seen].unsqueeze(1)
        self.distribution[seen] = new_rows.to(self.distribution.dtype)
        self._sums.zero_()
        self._counts.zero_()
