"""Knowledge distillation (Hinton et al. 2015) and how smooth a teacher's predictions are.

Müller, Kornblith & Hinton (2019, Section 4) claim a teacher trained with label
smoothing is a worse teacher: its logits keep less information about which classes resemble
each other. :func:`distillation_loss` is the student's objective and :func:`smoothness_index`
puts a teacher (at any temperature) on the same scale as a label-smoothing factor, so a smoothed
teacher and a temperature-scaled hard-target teacher can be compared.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import ContentChecks, check_class_indices, check_logits, check_reduction
from ..losses import cross_entropy

__all__ = ["distillation_loss", "smoothness_index"]


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def _check_target(target: Tensor, logits: Tensor) -> None:
    """``target``: (N,) integer class indices in [0, K) for (N, K) ``logits`` (one host sync)."""
    n, k = logits.shape
    if not isinstance(target, Tensor) or target.shape != (n,) or target.is_floating_point() \
            or target.is_complex() or target.dtype == torch.bool:
        got = (f"dtype {target.dtype}, shape {tuple(target.shape)}" if isinstance(target, Tensor)
               else type(target).__name__)
        raise ValueError(f"target must be an integer tensor of {n} class indices, shape ({n},), got {got}")
    checks = ContentChecks()
    check_class_indices(target, k, None, checks)
    checks.raise_if_failed()


def _check_pair(student_logits: Tensor, teacher_logits: Tensor, target: Tensor) -> None:
    check_logits(student_logits, "student_logits")
    check_logits(teacher_logits, "teacher_logits")
    if student_logits.dim() != 2 or teacher_logits.shape != student_logits.shape:
        raise ValueError(f"student_logits and teacher_logits must both have shape (N, K), got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    _check_target(target, student_logits)


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, *,
                      beta: float = 0.0, temperature: float = 1.0, reduction: str = "mean") -> Tensor:
    r"""Hinton et al. (2015) distillation loss of a student against a fixed teacher.

    Per row, with ``p^T = softmax(teacher / T)`` and ``q^T = softmax(student / T)``::

        loss = beta * CE(student, y) + (1 - beta) * T^2 * KL(p^T || q^T)
        KL(p || q) = sum_k p_k (log p_k - log q_k)

    ``T^2`` keeps the soft term's gradient the same size as ``T`` changes. The teacher is
    detached (no gradient flows into it). ``beta = 0`` trains on the teacher alone, which is what
    isolates the teacher's quality; ``beta = 1`` is ordinary training on hard labels.

    Args:
        student_logits: (N, K) logits of the student.
        teacher_logits: (N, K) logits of the teacher (any floating dtype).
        target: (N,) hard class indices.
        beta: weight of the hard-label cross-entropy, in [0, 1].
        temperature: T > 0, applied to both teacher and student in the KL term.
        reduction: ``"mean"`` (over the batch), ``"sum"`` or ``"none"`` (shape (N,)).

    Example: a student that copies the teacher has zero soft loss.
        >>> import torch
        >>> z = torch.tensor([[2.0, 0.5, -1.0]])
        >>> distillation_loss(z, z, torch.tensor([0]), beta=0.0, temperature=4.0)
        tensor(0.)
    """
    _check_pair(student_logits, teacher_logits, target)
    check_reduction(reduction)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be a number in [0, 1], got {beta!r}")
    t = _check_temperature(temperature)
    student_log_probs = F.log_softmax(student_logits / t, dim=1)
    teacher_log_probs = F.log_softmax(teacher_logits.detach().to(student_log_probs.dtype) / t, dim=1)
    soft = F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True).sum(1)
    loss = (1.0 - beta) * t * t * soft
    if beta > 0:
        loss = loss + beta * cross_entropy(student_logits, target, reduction="none", validate_args=False)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


def smoothness_index(logits: Tensor, target: Tensor, *, temperature: float = 1.0) -> Tensor:
    r"""How much probability a model puts on the wrong classes, on the label-smoothing scale.

    With ``p = softmax(logits / T)`` over K classes and N rows::

        index = K / (K - 1) * mean_n (1 - p[n, y_n])

    A model that reproduces uniformly smoothed targets ``(1 - eps) onehot + eps / K`` exactly
    has index ``eps``: the non-target mass ``eps (K - 1) / K`` rescaled by ``K / (K - 1)``. This
    is the scale on which Müller et al. (2019, Section 4) compare teachers trained with label
    smoothing against hard-target teachers softened by a temperature. 0 is a one-hot teacher;
    1 is a uniform one. Returns a 0-dim float tensor.

    Example: logits that are the log of eps = 0.1 smoothed targets (K = 4).
        >>> import torch
        >>> q = torch.full((1, 4), 0.025); q[0, 2] = 0.925
        >>> round(float(smoothness_index(q.log(), torch.tensor([2]))), 6)
        0.1
    """
    check_logits(logits, "logits")
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape (N, K) with K >= 2, got {tuple(logits.shape)}")
    _check_target(target, logits)
    t = _check_temperature(temperature)
    k = logits.shape[1]
    probs = torch.softmax(logits.detach().double() / t, dim=1)
    target_prob = probs.gather(1, target.long().unsqueeze(1)).squeeze(1)
    return k / (k - 1) * (1.0 - target_prob).mean()
