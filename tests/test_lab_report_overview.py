"""lab.report.overview: the verdict rule on constructed histories (over-fitting, accuracy), best
epoch and rise."""

from __future__ import annotations

import numpy as np
import pytest

from labelsmooth.lab.report import overview
from labelsmooth.lab.stats import estimate


def claim_verdicts(results: dict, claim: str) -> dict[str, str]:
    groups = overview.group_runs(results)
    test = next(t for t in overview.CLAIM_TESTS.values() if t.claim == claim)
    return {v["scope"]: v["verdict"] for v in overview.claim_verdicts(test, groups)}


def test_clear_reduction_of_overfitting_is_supported(lab_runs):
    results = lab_runs.results({0.0: [0.30, 0.32, 0.29], 0.1: [0.05, 0.06, 0.04]})
    assert claim_verdicts(results, "1") == {"eps=0.1 vs eps=0": "supported"}


def test_more_overfitting_with_smoothing_is_not_supported(lab_runs):
    results = lab_runs.results({0.0: [0.30, 0.32, 0.29], 0.1: [0.40, 0.43, 0.41]})
    assert claim_verdicts(results, "1") == {"eps=0.1 vs eps=0": "not supported"}
    verdict, = overview.claim_verdicts(overview.CLAIM_TESTS["overfitting"], overview.group_runs(results))
    assert "made it worse" in verdict["evidence"]


def test_precisely_no_difference_is_not_supported_and_noisy_one_is_inconclusive(lab_runs):
    same = lab_runs.results({0.0: [0.30, 0.32, 0.29], 0.1: [0.301, 0.319, 0.291]})
    assert claim_verdicts(same, "1") == {"eps=0.1 vs eps=0": "not supported"}
    noisy = lab_runs.results({0.0: [0.30, 0.32, 0.29], 0.1: [0.10, 0.45, 0.25]})
    assert claim_verdicts(noisy, "1") == {"eps=0.1 vs eps=0": "inconclusive"}


def test_single_seed_or_baseline_without_overfitting_is_inconclusive(lab_runs):
    single = lab_runs.results({0.0: [0.30], 0.1: [0.05]})
    assert claim_verdicts(single, "1") == {"eps=0.1 vs eps=0": "inconclusive"}
    flat = lab_runs.results({0.0: [0.0, 0.0, 0.0], 0.1: [0.0, 0.0, 0.0]}, minimum_epoch=12)
    verdicts = overview.claim_verdicts(overview.CLAIM_TESTS["overfitting"], overview.group_runs(flat))
    assert [v["verdict"] for v in verdicts] == ["inconclusive"]
    assert "does not over-fit" in verdicts[0]["evidence"]


def test_accuracy_claim_uses_the_imagenet_effect_size(lab_runs):
    rises = {0.0: [0.1] * 3, 0.1: [0.1] * 3}
    gain = lab_runs.results(rises, accuracy={0.0: [0.80, 0.81, 0.82], 0.1: [0.81, 0.82, 0.83]})
    assert claim_verdicts(gain, "3") == {"eps=0.1 vs eps=0": "supported"}
    none = lab_runs.results(rises, accuracy={0.0: [0.80, 0.81, 0.82], 0.1: [0.8001, 0.8099, 0.8201]})
    assert claim_verdicts(none, "3") == {"eps=0.1 vs eps=0": "not supported"}


def test_best_epoch_and_rise_follow_the_history(lab_runs):
    history = lab_runs.history(10, minimum_epoch=3, rise=0.2, offset=0.0)
    epoch, minimum, final = overview.best_epoch({"history": history})
    values = [row["val_nll"] for row in history]
    assert (epoch, minimum, final) == (int(np.argmin(values)) + 1, min(values), values[-1])
    assert overview.overfitting_rise({"history": history}) == pytest.approx(0.2)


def test_judge_refuses_unknown_direction():
    with pytest.raises(ValueError, match="better"):
        overview.judge(estimate([1.0, 2.0]), "smaller", 0.1)
