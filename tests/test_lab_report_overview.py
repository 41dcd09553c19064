"""lab.report.overview: the over-fitting and accuracy claims on constructed histories (the one rule,
the precondition, legacy runs), best epoch and the rise (mean of the last epochs minus the minimum)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from labelsmooth.lab.report import overview
from labelsmooth.lab.report.context import ReportContext


def verdicts(results: dict, section=overview.overfitting_section) -> dict[str, dict]:
    return {v["contrast"]: v for v in section(ReportContext(results, Path("."))).verdicts}


def test_clear_reduction_of_overfitting_is_supported_and_primary(lab_runs):
    results = lab_runs.results({0.0: [0.30, 0.32, 0.29], 0.05: [0.2, 0.21, 0.19], 0.1: [0.05, 0.06, 0.04]})
    found = verdicts(results)
    assert {c: v["verdict"] for c, v in found.items()} == {"eps=0.05 vs eps=0": "supported",
                                                          "eps=0.1 vs eps=0": "supported"}
    assert found["eps=0.1 vs eps=0"]["primary"] and not found["eps=0.05 vs eps=0"]["primary"]
    assert found["eps=0.1 vs eps=0"]["split"] == "validation"


def test_more_overfitting_with_smoothing_is_worse(lab_runs):
    found = verdicts(lab_runs.results({0.0: [0.30, 0.32, 0.29], 0.1: [0.40, 0.43, 0.41]}))["eps=0.1 vs eps=0"]
    assert (found["verdict"], found["wording"]) == ("not supported", "worse")


def test_precisely_no_difference_is_not_supported_and_noisy_one_is_inconclusive(lab_runs):
    same = verdicts(lab_runs.results({0.0: [0.30, 0.32, 0.29], 0.1: [0.301, 0.319, 0.291]}))
    assert same["eps=0.1 vs eps=0"]["verdict"] == "not supported"
    noisy = verdicts(lab_runs.results({0.0: [0.30, 0.32, 0.29], 0.1: [0.10, 0.45, 0.25]}))
    assert noisy["eps=0.1 vs eps=0"]["verdict"] == "inconclusive"


def test_single_seed_is_inconclusive_and_a_flat_baseline_is_not_applicable(lab_runs):
    assert verdicts(lab_runs.results({0.0: [0.30], 0.1: [0.05]}))["eps=0.1 vs eps=0"]["verdict"] == "inconclusive"
    flat = verdicts(lab_runs.results({0.0: [0.0, 0.0, 0.0], 0.1: [0.0, 0.0, 0.0]}, minimum_epoch=12))
    assert flat["eps=0.1 vs eps=0"]["verdict"] == "not applicable"
    assert "lowest at epoch 12 of 12" in flat["eps=0.1 vs eps=0"]["reason"]
    tiny = verdicts(lab_runs.results({0.0: [0.001, 0.002, 0.001], 0.1: [0.0, 0.0, 0.0]}))
    assert tiny["eps=0.1 vs eps=0"]["verdict"] == "not applicable"
    assert "does not over-fit" in tiny["eps=0.1 vs eps=0"]["reason"]


def test_a_run_that_predates_the_validation_split_gets_not_applicable(lab_runs):
    results = lab_runs.results({0.0: [0.30, 0.32, 0.29], 0.1: [0.05, 0.06, 0.04]})
    del results["config"]["validation_split"]
    found = verdicts(results)["eps=0.1 vs eps=0"]
    assert found["verdict"] == "not applicable" and "test split" in found["reason"]


def test_accuracy_claim_uses_the_imagenet_effect_size(lab_runs):
    rises = {0.0: [0.1] * 3, 0.1: [0.1] * 3}
    gain = lab_runs.results(rises, accuracy={0.0: [0.80, 0.81, 0.82], 0.1: [0.81, 0.82, 0.83]})
    found = verdicts(gain, overview.final_metrics_section)["eps=0.1 vs eps=0"]
    assert (found["verdict"], found["margin"], found["split"]) == ("supported", 0.002, "test")
    none = lab_runs.results(rises, accuracy={0.0: [0.80, 0.81, 0.82], 0.1: [0.8001, 0.8099, 0.8201]})
    assert verdicts(none, overview.final_metrics_section)["eps=0.1 vs eps=0"]["verdict"] == "not supported"


def test_best_epoch_and_rise_use_the_mean_of_the_last_epochs(lab_runs):
    history = lab_runs.history(40, minimum_epoch=10, rise=0.3, offset=0.0)
    history[-1]["val_nll"] += 5.0  # one spike in the last epoch moves the mean by 5/4, not by 5
    epoch, minimum, tail = overview.best_epoch({"history": history})
    values = [row["val_nll"] for row in history]
    assert (epoch, minimum) == (int(np.argmin(values)) + 1, min(values))
    assert overview.tail_epochs(40) == 4
    assert tail == pytest.approx(np.mean(values[-4:]))
    assert overview.overfitting_rise({"history": history}) == pytest.approx(np.mean(values[-4:]) - min(values))
