"""lab.report.distillation: the section on a synthetic distillation results.json (its table, figure
and verdict against scipy's paired t interval, the precondition that distillation helps at all),
and the report's choice of sections."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import stats

from labelsmooth.lab.report import builder
from labelsmooth.lab.report.context import ReportContext
from labelsmooth.lab.report.distillation import DIRECT, TEACHER, distillation_section, distilled_role

CONFIG = {"dataset": "digits", "teacher_widths": [8], "student_widths": [4], "beta": 0.0}
# student test accuracy per seed, distilled at T=1 from the eps=0 and the eps=0.1 teacher
HARD, SMOOTH = [0.90, 0.91, 0.92], [0.85, 0.855, 0.87]


def synthetic_distillation() -> dict:
    """Teachers, direct students and students distilled at T=1, three seeds, as lab.distill writes them."""
    runs = []
    for seed in range(3):
        for eps in (0.0, 0.1):
            base = {"label_smoothing": eps, "seed": seed, "distribution": "uniform", "history": []}
            runs.append({**base, "model": TEACHER, "cell": f"teachers/t{eps}-{seed}", "smoothness_index": eps,
                         "test": {"accuracy": 0.95, "nll": 0.2, "ece": 0.02}})
            runs.append({**base, "model": DIRECT, "cell": f"students/s{eps}-{seed}",
                         "test": {"accuracy": 0.88, "nll": 0.4, "ece": 0.03}})
            accuracy = (SMOOTH if eps else HARD)[seed]
            runs.append({**base, "model": distilled_role(1.0), "cell": f"distilled-T1-t{eps}-{seed}",
                         "temperature": 1.0, "beta": 0.0, "smoothness_index": 0.05 + eps,
                         "holdout_accuracy": accuracy, "test": {"accuracy": accuracy, "nll": 0.5, "ece": 0.04}})
    return {"config": CONFIG, "runs": runs, "complete": True}


def write_students(run_dir, validation_accuracy: float) -> None:
    """students/cells/<cell>/final.npz whose hold-out logits have the given accuracy (100 rows)."""
    for eps in (0.0, 0.1):
        for seed in range(3):
            folder = run_dir / "students" / "cells" / f"s{eps}-{seed}"
            folder.mkdir(parents=True)
            target = np.arange(100) % 4
            right = round(validation_accuracy * 100)
            logits = np.eye(4, dtype=np.float32)[np.where(np.arange(100) < right, target, (target + 1) % 4)]
            np.savez(folder / "final.npz", holdout_logits=logits, holdout_target=target,
                     test_logits=logits, test_target=target)


def test_section_states_the_paired_verdict_that_scipy_gives(tmp_path):
    write_students(tmp_path, validation_accuracy=0.80)  # distilled students (0.85-0.92) do better
    output = distillation_section(ReportContext(synthetic_distillation(), tmp_path))
    verdict, = output.verdicts
    assert (verdict["claim"], verdict["verdict"], verdict["predicts"]) == ("distillation", "supported", "deterioration")
    assert verdict["contrast"] == "eps=0.1 student, distilled at T=1 vs eps=0 student, distilled at T=1"
    assert verdict["primary"]
    interval = stats.ttest_rel(SMOOTH, HARD).confidence_interval(0.95)
    assert verdict["mean"] == pytest.approx(np.mean(np.subtract(SMOOTH, HARD)), abs=1e-12)
    assert (verdict["high"] - verdict["low"]) / 2 == pytest.approx((interval.high - interval.low) / 2, rel=2e-5)
    assert (tmp_path / "distillation_students.png").is_file()
    rows = re.findall(r"<tr><td>(teacher|student[^<]*)</td><td>([0-9.]+)</td><td>3</td>", output.html)
    assert rows == [(TEACHER, "0"), (TEACHER, "0.1"), (distilled_role(1.0), "0"), (distilled_role(1.0), "0.1"),
                    (DIRECT, "0"), (DIRECT, "0.1")]
    # the figure's caption sits in the figure's own element, under its image
    assert re.search(r"<figure><img [^>]*><figcaption>Student test accuracy", output.html)


def test_the_claim_is_not_applicable_when_distillation_does_not_beat_direct_training(tmp_path):
    write_students(tmp_path, validation_accuracy=0.95)
    verdict, = distillation_section(ReportContext(synthetic_distillation(), tmp_path)).verdicts
    assert verdict["verdict"] == "not applicable" and "beats the student trained directly" in verdict["reason"]


@pytest.mark.parametrize("config, sections", [(CONFIG, builder.DISTILLATION_SECTIONS),
                                              ({"dataset": "digits", "models": ["mlp"]}, builder.SWEEP_SECTIONS)])
def test_the_report_picks_the_sections_by_the_kind_of_run(config, sections):
    assert builder.sections_for({"config": config, "runs": []}) == sections
