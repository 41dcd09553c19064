"""timm: its label-smoothing losses by name and constructor, computed by labelsmooth.

A ``train.py``-style script switches by one import; timm's ``Mixup`` stays as it is:

    # from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from labelsmooth.integrations.timm import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    mixup_fn = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=K)
    train_loss_fn = SoftTargetCrossEntropy() if mixup_fn else LabelSmoothingCrossEntropy(smoothing=0.1)

The values are timm's (timm 1.0.29, ``timm/loss/cross_entropy.py``) wherever both accept the input:
``LabelSmoothingCrossEntropy(smoothing=eps)`` is ``(1 - eps) nll + eps mean_c(-log p_c)`` averaged
over the batch, which is :func:`labelsmooth.cross_entropy` with ``label_smoothing=eps`` (uniform
``eps/K`` per class); ``SoftTargetCrossEntropy()`` is ``sum_c -q_c log p_c`` averaged over the
batch for probability targets q (Mixup's smoothed, mixed one-hots). Where they differ from timm:

- a target equal to ``ignore_index`` (-100) counts nowhere, a target out of range raises a
  ValueError (timm's gather fails on both); class indices also work in ``SoftTargetCrossEntropy``;
- targets are checked as :func:`labelsmooth.cross_entropy` checks them, where timm computes with
  whatever comes (``validate_args=False`` skips the checks of their contents);
- logits may have extra dimensions, (N, K, d1, ...) as in ``F.cross_entropy`` (timm: (N, K) only);
- fp16 / bf16 logits are reduced in fp32; class-index targets on CUDA use the fused Triton
  kernel when it is installed;
- every option of :class:`labelsmooth.CrossEntropyLoss` can be passed by keyword
  (``distribution="non_target"``, ``z_loss``, ``return_parts=True`` to log the unsmoothed NLL).
  ``SoftTargetCrossEntropy(label_smoothing=eps)`` with ``Mixup(label_smoothing=0)`` gives the
  same loss as ``SoftTargetCrossEntropy()`` with ``Mixup(label_smoothing=eps)``: both smooth the
  mixed target to ``(1 - eps) q + eps / K``.

Binary cross-entropy: timm's ``BinaryCrossEntropy(smoothing=eps)`` turns class indices into
targets ``eps/K`` (off) and ``1 - eps + eps/K`` (on), the softmax convention carried over to K
independent sigmoids; :func:`labelsmooth.binary_cross_entropy_with_logits` uses ``y (1 - eps) +
eps/2``, the smoothing of each binary label towards 1/2 (Keras' convention). They agree only for
K = 2, so no drop-in is offered: keep timm's class for its convention, or use labelsmooth's on
multi-hot targets for the per-label one.

Nothing here imports timm: these classes need only torch.
"""

from __future__ import annotations

from labelsmooth import CrossEntropyLoss

__all__ = ["LabelSmoothingCrossEntropy", "SoftTargetCrossEntropy"]


class LabelSmoothingCrossEntropy(CrossEntropyLoss):
    """timm's ``LabelSmoothingCrossEntropy(smoothing=0.1)``: class-index targets, uniform smoothing.

    ``loss = (1 - eps) (-log p_y) + eps mean_c(-log p_c)``, averaged over the batch; logits (N, K),
    targets (N,). Keyword ``options`` are those of :class:`labelsmooth.CrossEntropyLoss`.

    >>> import torch
    >>> logits, target = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]]), torch.tensor([0, 2])
    >>> LabelSmoothingCrossEntropy(smoothing=0.1)(logits, target)
    tensor(0.9547)
    >>> torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.1)
    tensor(0.9547)
    """

    def __init__(self, smoothing: float = 0.1, **options) -> None:
        super().__init__(label_smoothing=smoothing, **options)

    @property
    def smoothing(self) -> float:
        return self.label_smoothing

    @property
    def confidence(self) -> float:
        return 1.0 - self.label_smoothing


class SoftTargetCrossEntropy(CrossEntropyLoss):
    """timm's ``SoftTargetCrossEntropy()``: probability targets (Mixup / CutMix), no smoothing of its own.

    ``loss = sum_c -q_c log p_c``, averaged over the batch; logits (N, K), targets (N, K)
    probabilities (class indices (N,) work too). Keyword ``options`` are those of
    :class:`labelsmooth.CrossEntropyLoss`, ``label_smoothing`` included.

    >>> import torch
    >>> logits, q = torch.tensor([[2.0, 0.5, -1.0]]), torch.tensor([[0.7, 0.3, 0.0]])
    >>> SoftTargetCrossEntropy()(logits, q)
    tensor(0.6913)
    >>> -(q * logits.log_softmax(-1)).sum()
    tensor(0.6913)
    """

    def __init__(self, **options) -> None:
        super().__init__(**options)
