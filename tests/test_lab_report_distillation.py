"""lab.report.distillation: the section on a synthetic distillation results.json (its table, figure
and verdict against scipy's paired t interval), and the report's choice of sections."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import stats

from labelsmooth.lab.report import builder
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


def test_section_states_the_paired_verdict_that_scipy_gives(tmp_path):
    html, verdicts = distillation_section(synthetic_distillation(), tmp_path)
    verdict, = verdicts
    assert (verdict["claim"], verdict["verdict"]) == ("4", "supported")
    assert verdict["scope"] == "eps=0.1 student, distilled at T=1 vs eps=0 student, distilled at T=1"
    interval = stats.ttest_rel(SMOOTH, HARD).confidence_interval(0.95)
    difference = np.mean(np.subtract(SMOOTH, HARD))
    assert f"paired difference {difference:.4f} [{interval.low:.4f}, {interval.high:.4f}]" in verdict["evidence"]
    assert (tmp_path / "distillation_students.png").is_file()
    rows = re.findall(r"<tr><td>(teacher|student[^<]*)</td><td>([0-9.]+)</td><td>3</td>", html)
    assert rows == [(TEACHER, "0"), (TEACHER, "0.1"), (distilled_role(1.0), "0"), (distilled_role(1.0), "0.1"),
                    (DIRECT, "0"), (DIRECT, "0.1")]


@pytest.mark.parametrize("config, sections", [(CONFIG, builder.DISTILLATION_SECTIONS),
                                              ({"dataset": "digits", "models": ["mlp"]}, builder.SWEEP_SECTIONS)])
def test_the_report_picks_the_sections_by_the_kind_of_run(config, sections):
    assert builder.sections_for({"config": config, "runs": []}) == sections
