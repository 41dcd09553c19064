"""Selective classification and misclassification detection with the max-probability score.

A classifier that may abstain keeps its ``k`` most confident predictions (confidence = the top
softmax probability) and rejects the rest. Sorted by decreasing confidence, the *risk* at
coverage ``k / N`` is the fraction of errors among the ``k`` kept predictions. Label smoothing is
reported to make this ranking worse (Zhu et al. 2023, *Rethinking Confidence Calibration for
Failure Prediction*; Xia et al. 2024, *Understanding Why Label Smoothing Degrades Selective
Classification and How to Fix It*). Metrics (all in float64):

- ``aurc``: the area under the risk-coverage curve, ``(1/N) sum_{k=1..N} risk_k`` (Geifman et al.
  2019); lower is better;
- ``excess_aurc`` (E-AURC): ``aurc`` minus the AURC of the ideal ranking of the same predictions
  (every error last), which removes the effect of accuracy itself;
- ``misclassification_auroc``: the probability that a right prediction has a higher confidence
  than a wrong one (ties count 1/2): the ROC AUC of confidence for telling right from wrong
  (higher is better; scikit-learn's ``roc_auc_score(correct, confidence)``), by :func:`roc_auc`,
  the library's one ROC AUC (out-of-distribution detection uses it too);
- ``risk_at_coverage``: the risk among the ``ceil(c N)`` most confident predictions (``c = 0.8``
  by default).

Tied confidences: the ranking inside a group of equal confidences is arbitrary, so the risk
curve uses the expected number of errors over every order of the group (the group's errors
spread evenly over its positions); the result does not depend on the order of the rows.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .metrics import ArrayLike, check_probabilities, top_label

__all__ = ["SELECTIVE_METRICS", "aurc", "excess_aurc", "misclassification_auroc", "risk_at_coverage",
           "risk_coverage_curve", "roc_auc", "selective_summary"]

# key of selective_summary -> (name, which direction is better)
SELECTIVE_METRICS = {"aurc": ("AURC", "lower"), "e_aurc": ("E-AURC", "lower"),
                     "auroc": ("AUROC of max-probability, right vs wrong", "higher"),
                     "risk_at_80": ("risk at 80% coverage", "lower")}


def _scores(probs: ArrayLike, target: ArrayLike, from_logits: bool, validate_args: bool) -> tuple[Tensor, Tensor]:
    """(confidence, correct) as float64 (N,) each."""
    probs, target = check_probabilities(probs, target, from_logits=from_logits, validate_args=validate_args)
    confidence, correct = top_label(probs.double(), target)
    return confidence, correct


def _tie_groups(values: Tensor, descending: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Sort order, group id of each sorted position, and the size of each group of equal values."""
    order = torch.argsort(values, descending=descending, stable=True)
    _, counts = torch.unique_consecutive(values[order], return_counts=True)
    group = torch.repeat_interleave(torch.arange(len(counts), device=values.device), counts)
    return order, group, counts


def _risk_curve(confidence: Tensor, correct: Tensor) -> Tensor:
    """risk_k for k = 1..N (expected over orders of tied confidences), float64 (N,)."""
    order, group, counts = _tie_groups(confidence, descending=True)
    errors = 1.0 - correct[order]
    group_errors = torch.zeros(len(counts), dtype=torch.float64, device=errors.device).index_add_(0, group, errors)
    errors_before = group_errors.cumsum(0) - group_errors
    starts = counts.cumsum(0) - counts
    position = torch.arange(1, len(errors) + 1, dtype=torch.float64, device=errors.device)
    inside = position - starts[group].double()
    expected = errors_before[group] + group_errors[group] * inside / counts[group].double()
    return expected / position


def risk_coverage_curve(probs: ArrayLike, target: ArrayLike, *, from_logits: bool = False,
                        validate_args: bool = True) -> tuple[Tensor, Tensor]:
    """(coverage, risk), each (N,) float64: keeping the k most confident predictions, coverage k/N
    and the fraction of errors among them.

    >>> p = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    >>> [round(r, 3) for r in risk_coverage_curve(p, torch.tensor([0, 1, 1]))[1].tolist()]
    [0.0, 0.0, 0.333]
    """
    confidence, correct = _scores(probs, target, from_logits, validate_args)
    coverage = torch.arange(1, len(correct) + 1, dtype=torch.float64, device=correct.device) / len(correct)
    return coverage, _risk_curve(confidence, correct)


def aurc(probs: ArrayLike, target: ArrayLike, *, from_logits: bool = False, validate_args: bool = True) -> Tensor:
    """Area under the risk-coverage curve, ``(1/N) sum_k risk_k``; lower is better.

    >>> p = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    >>> round(aurc(p, torch.tensor([0, 1, 1])).item(), 4)
    0.1111
    """
    confidence, correct = _scores(probs, target, from_logits, validate_args)
    return _risk_curve(confidence, correct).mean()


def _ideal_aurc(correct: Tensor) -> Tensor:
    """AURC with every error ranked last: ``(1/N) sum_k max(0, k - (N - errors)) / k``."""
    n = len(correct)
    position = torch.arange(1, n + 1, dtype=torch.float64, device=correct.device)
    right = correct.sum()
    return ((position - right).clamp(min=0) / position).mean()


def excess_aurc(probs: ArrayLike, target: ArrayLike, *, from_logits: bool = False,
                validate_args: bool = True) -> Tensor:
    """E-AURC: :func:`aurc` minus the AURC of the ideal ranking of the same predictions (>= 0).

    >>> p = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    >>> round(excess_aurc(p, torch.tensor([0, 1, 1])).item(), 4)
    0.0
    """
    confidence, correct = _scores(probs, target, from_logits, validate_args)
    return _risk_curve(confidence, correct).mean() - _ideal_aurc(correct)


def roc_auc(scores: Tensor, positive: Tensor) -> Tensor:
    r"""Area under the ROC curve of ``scores`` for telling the rows where ``positive`` holds from the others.

    ``AUROC = P(s+ > s-) + P(s+ = s-) / 2`` over all (positive, negative) pairs, from mid-ranks
    (Mann-Whitney): ``(R+ - n+ (n+ + 1) / 2) / (n+ n-)``, ``R+`` the positives' rank sum, tied scores
    sharing their mean rank; scikit-learn's ``roc_auc_score(positive, scores)``. Float64, one host
    sync (to refuse an empty class).

    Args:
        scores: (N,) real scores, higher meaning "positive".
        positive: (N,) bool (or 0/1) labels, with at least one of each.

    Returns:
        0-dim float64 tensor on the scores' device.

    >>> roc_auc(torch.tensor([0.9, 0.5, 0.5, 0.1]), torch.tensor([True, True, False, False])).item()
    0.875
    """
    positive = positive.bool()
    positives = int(positive.sum())
    negatives = len(positive) - positives
    if positives == 0 or negatives == 0:
        raise ValueError(f"positive must mark at least one positive and one negative row for a ROC AUC, got "
                         f"{positives} positive and {negatives} negative")
    scores = scores.double()
    order, group, counts = _tie_groups(scores, descending=False)
    starts = counts.cumsum(0) - counts
    average_rank = starts.double() + (counts.double() + 1) / 2  # ranks 1..N, ties averaged
    ranks = torch.empty_like(scores)
    ranks[order] = average_rank[group]
    return (ranks[positive].sum() - positives * (positives + 1) / 2) / (positives * negatives)


def _auroc(confidence: Tensor, correct: Tensor) -> Tensor:
    right = int(correct.sum())
    if right in (0, len(correct)):
        raise ValueError(f"misclassification AUROC needs both right and wrong predictions, got "
                         f"{right} right and {len(correct) - right} wrong")
    return roc_auc(confidence, correct)


def misclassification_auroc(probs: ArrayLike, target: ArrayLike, *, from_logits: bool = False,
                            validate_args: bool = True) -> Tensor:
    """ROC AUC of the max probability for telling right predictions (positive) from wrong ones.

    The Mann-Whitney statistic with tied confidences counted 1/2; ValueError when every
    prediction is right or every one wrong (the AUC is undefined).

    >>> p = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    >>> misclassification_auroc(p, torch.tensor([0, 1, 1, 0])).item()
    0.75
    """
    return _auroc(*_scores(probs, target, from_logits, validate_args))


def _coverage_count(coverage: float, n: int) -> int:
    if not (isinstance(coverage, (int, float)) and 0 < coverage <= 1):
        raise ValueError(f"coverage must be a number in (0, 1], got {coverage!r}")
    return max(1, math.ceil(coverage * n - 1e-9))


def risk_at_coverage(probs: ArrayLike, target: ArrayLike, coverage: float = 0.8, *, from_logits: bool = False,
                     validate_args: bool = True) -> Tensor:
    """The fraction of errors among the ``ceil(coverage N)`` most confident predictions.

    >>> p = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    >>> risk_at_coverage(p, torch.tensor([1, 1, 1, 1]), 0.5).item()
    0.5
    """
    confidence, correct = _scores(probs, target, from_logits, validate_args)
    return _risk_curve(confidence, correct)[_coverage_count(coverage, len(correct)) - 1]


def selective_summary(probs: ArrayLike, target: ArrayLike, *, from_logits: bool = False,
                      validate_args: bool = True) -> dict[str, float | None]:
    """Every metric of :data:`SELECTIVE_METRICS` as floats (``auroc`` None when undefined).

    >>> p = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    >>> {k: round(v, 4) for k, v in selective_summary(p, torch.tensor([0, 1, 1, 0])).items()}
    {'aurc': 0.3333, 'e_aurc': 0.125, 'auroc': 0.75, 'risk_at_80': 0.5}
    """
    confidence, correct = _scores(probs, target, from_logits, validate_args)
    risk = _risk_curve(confidence, correct)
    mixed = 0 < correct.sum() < len(correct)
    return {"aurc": float(risk.mean()), "e_aurc": float(risk.mean() - _ideal_aurc(correct)),
            "auroc": float(_auroc(confidence, correct)) if mixed else None,
            "risk_at_80": float(risk[_coverage_count(0.8, len(correct)) - 1])}
