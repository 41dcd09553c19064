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

from .losses import cross_entropy
from ._checks import check_label_smoothing, check_reduction

__all__ = ["OnlineLabelSmoothing"]


class OnlineLabelSmoothing(nn.Module):
    """Loss module holding a (K, K) smoothing distribution re-estimated once per epoch.

    Call ``update(logits, target)`` on each training batch (or let ``forward`` do it while the
    module is in training mode with ``auto_update=True``) and ``step()`` at the end of the epoch.
    Rows of classes with no correct prediction during the epoch keep their previous value. The
    first epoch uses ``initial`` (default: uniform rows, i.e. ordinary label smoothing).

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
                 reduction: str = "mean", ignore_index: int = -100, auto_update: bool = False) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        check_reduction(reduction)
        self.label_smoothing = check_label_smoothing(label_smoothing, torch.Size(), None)
        if initial is None:
            initial = torch.full((num_classes, num_classes), 1.0 / num_classes)
        elif not isinstance(initial, Tensor) or initial.shape != (num_classes, num_classes):
            raise ValueError(f"initial must be a ({num_classes}, {num_classes}) tensor, got "
                             f"{tuple(initial.shape) if isinstance(initial, Tensor) else type(initial).__name__}")
        self.num_classes, self.reduction, self.ignore_index = num_classes, reduction, ignore_index
        self.auto_update = auto_update
        self.register_buffer("distribution", initial.clone().float())
        self.register_buffer("_sums", torch.zeros(num_classes, num_classes))
        self.register_buffer("_counts", torch.zeros(num_classes))

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if self.auto_update and self.training:
            self.update(input, target)
        # Passed in its own dtype: the loss casts it, and checks its row sums at fp32's tolerance.
        return cross_entropy(input, target, None, self.ignore_index, self.reduction, self.label_smoothing,
                             distribution=self.distribution)

    @torch.no_grad()
    def update(self, logits: Tensor, target: Tensor) -> None:
        """Accumulate the predicted distributions of correctly classified samples, by class."""
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must have shape (N, {self.num_classes}), got {tuple(logits.shape)}")
        if target.shape != logits.shape[:1]:
            raise ValueError(f"target must have shape ({logits.shape[0]},), got {tuple(target.shape)}")
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
