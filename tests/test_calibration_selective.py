"""calibration.selective against independent references: scikit-learn's roc_auc_score for the
misclassification AUROC, and the risk-coverage definitions written out in float64 Python (with
ties, the average over every order of the tied rows, enumerated)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from labelsmooth.analysis import auroc
from labelsmooth.calibration import (
    aurc,
    excess_aurc,
    misclassification_auroc,
    risk_at_coverage,
    risk_coverage_curve,
    roc_auc,
    selective_summary,
)


def reference_risks(confidence: list[float], correct: list[int], order: list[int]) -> list[float]:
    """risk_k of one ranking (``order``: row indices, most confident first), from the definition."""
    errors, risks = 0, []
    for k, row in enumerate(order, start=1):
        errors += 1 - correct[row]
        risks.append(errors / k)
    return risks


def reference_curve(confidence: list[float], correct: list[int]) -> list[float]:
    """The risk curve averaged over every ranking consistent with the confidences (ties in any order)."""
    levels = sorted(set(confidence), reverse=True)
    groups = [[i for i, c in enumerate(confidence) if c == level] for level in levels]
    curves = [reference_risks(confidence, correct, [row for group in orders for row in group])
              for orders in itertools.product(*(itertools.permutations(g) for g in groups))]
    return [math.fsum(c[k] for c in curves) / len(curves) for k in range(len(confidence))]


def logits_and_target(n: int, k: int, seed: int, ties: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * 2
    if ties:  # coarse logits make equal max-probabilities across rows
        logits = logits.round()
    target = torch.randint(0, k, (n,), generator=g)
    return logits, target


@pytest.mark.parametrize("seed, ties", [(0, False), (1, True), (2, True)])
def test_risk_curve_aurc_and_coverage_against_the_definition(seed, ties):
    logits, target = logits_and_target(9, 3, seed, ties)
    probs = logits.softmax(1)
    confidence, prediction = probs.max(1)
    correct = (prediction == target).long().tolist()
    confidence = confidence.tolist()
    if ties:
        assert len(set(confidence)) < len(confidence), "the case must have tied confidences"
    want = reference_curve(confidence, correct)
    coverage, risk = risk_coverage_curve(probs, target)
    assert coverage.tolist() == pytest.approx([k / 9 for k in range(1, 10)], abs=1e-15)
    assert risk.tolist() == pytest.approx(want, abs=1e-12)
    assert aurc(probs, target).item() == pytest.approx(math.fsum(want) / 9, abs=1e-12)
    ideal = reference_risks(confidence, correct, sorted(range(9), key=lambda i: -correct[i]))
    assert excess_aurc(probs, target).item() == pytest.approx((math.fsum(want) - math.fsum(ideal)) / 9, abs=1e-12)
    for c in (0.1, 0.5, 0.8, 1.0):
        assert risk_at_coverage(probs, target, c).item() == pytest.approx(want[math.ceil(c * 9) - 1], abs=1e-12)


@pytest.mark.parametrize("seed, ties", [(3, False), (4, True)])
def test_misclassification_auroc_equals_scikit_learn(seed, ties):
    logits, target = logits_and_target(400, 5, seed, ties)
    probs = logits.softmax(1)
    confidence, prediction = probs.max(1)
    correct = (prediction == target).numpy()
    expected = roc_auc_score(correct, confidence.numpy())
    assert misclassification_auroc(logits, target, from_logits=True).item() == pytest.approx(expected, abs=1e-12)
    summary = selective_summary(probs, target)
    assert summary["auroc"] == pytest.approx(expected, abs=1e-12)
    assert summary["aurc"] == pytest.approx(aurc(probs, target).item(), abs=1e-15)


@pytest.mark.parametrize("levels", [None, 4, 1])
def test_roc_auc_equals_scikit_learn_with_ties_and_is_the_one_behind_both_aurocs(levels):
    rng = np.random.default_rng(21)
    scores, positive = rng.normal(0, 1, 250), rng.random(250) < 0.4
    scores[positive] += 0.8
    if levels is not None:  # coarse scores: ties within and across the classes (levels=1: a handful of values)
        scores = np.round(scores * levels) / levels
    expected = roc_auc_score(positive, scores)
    found = roc_auc(torch.from_numpy(scores), torch.from_numpy(positive))
    assert found.dtype == torch.float64 and found.item() == pytest.approx(expected, abs=1e-12)
    # the OOD detector's AUROC (two groups of scores) is the same function
    assert auroc(scores[positive], scores[~positive]) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="at least one positive and one negative row for a ROC AUC, "
                                         "got 3 positive and 0 negative"):
        roc_auc(torch.ones(3), torch.ones(3, dtype=torch.bool))


def test_results_do_not_depend_on_the_order_of_rows():
    logits, target = logits_and_target(200, 4, 5, ties=True)
    permutation = torch.randperm(200, generator=torch.Generator().manual_seed(0))
    for metric in (aurc, excess_aurc, misclassification_auroc, risk_at_coverage):
        a = metric(logits, target, from_logits=True).item()
        b = metric(logits[permutation], target[permutation], from_logits=True).item()
        assert a == pytest.approx(b, abs=1e-14), metric.__name__


def test_perfect_ranking_has_zero_excess_and_undefined_auroc_is_refused():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.55, 0.45]], dtype=torch.float64)
    target = torch.tensor([0, 0, 1, 1])  # the two right predictions are the two most confident
    assert excess_aurc(probs, target).item() == pytest.approx(0.0, abs=1e-15)
    assert misclassification_auroc(probs, target).item() == 1.0
    all_right = torch.tensor([0, 0, 0, 0])
    with pytest.raises(ValueError, match="both right and wrong predictions, got 4 right and 0 wrong"):
        misclassification_auroc(probs, all_right)
    assert selective_summary(probs, all_right)["auroc"] is None
    assert aurc(probs, all_right).item() == 0.0


@pytest.mark.parametrize("call, match", [
    (lambda p, y: risk_at_coverage(p, y, 0.0), "coverage must be a number in"),
    (lambda p, y: aurc(p[:, :1].squeeze(1), y), "shape"),
    (lambda p, y: aurc(p * 0.5, y), "sum to 1"),
    (lambda p, y: aurc(p, y + 2), "target"),
])
def test_bad_input_is_refused(call, match):
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    with pytest.raises(ValueError, match=match):
        call(probs, torch.tensor([0, 1]))


def test_float32_input_is_scored_in_float64():
    logits, target = logits_and_target(300, 6, 6)
    a = aurc(logits.float(), target, from_logits=True)
    b = aurc(logits, target, from_logits=True)
    assert a.dtype == torch.float64 and a.item() == pytest.approx(b.item(), abs=1e-6)
    assert np.isfinite(a.item())
