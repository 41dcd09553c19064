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
from labelsmooth.lab.report.distillation import DIRECT, TEACHER, chosen_students, distillation_section, distilled_role

CONFIG = {"dataset": "digits", "teacher_widths": [8], "student_widths": [4], "beta": 0.0, "student_train_size": 100}
# per teacher eps and temperature: the distilled students' (validation, test) accuracy of seeds 0, 1, 2.
# The validation split chooses T=4 for the eps=0 teacher on seeds 0 and 1 and T=1 on seed 2, and T=1
# for the eps=0.1 teacher on every seed; the test split would choose T=1 for both.
STUDENTS = {
    (0.0, 1.0): ([0.80, 0.80, 0.80], [0.90, 0.91, 0.92]),
    (0.0, 4.0): ([0.85, 0.86, 0.79], [0.88, 0.885, 0.89]),
    (0.1, 1.0): ([0.84, 0.85, 0.83], [0.85, 0.855, 0.87]),
    (0.1, 4.0): ([0.83, 0.84, 0.82], [0.80, 0.80, 0.81]),
}
CHOSEN_HARD = [0.88, 0.885, 0.92]  # test accuracy of the eps=0 teacher's students at the chosen temperatures
CHOSEN_SMOOTH = STUDENTS[0.1, 1.0][1]


def synthetic_distillation() -> dict:
    """Teachers, direct students and students distilled at T=1 and T=4, three seeds, as lab.distill writes them."""
    runs = []
    for seed in range(3):
        for eps in (0.0, 0.1):
            base = {"label_smoothing": eps, "seed": seed, "distribution": "uniform", "history": []}
            runs.append({**base, "model": TEACHER, "cell": f"teachers/t{eps}-{seed}", "smoothness_index": eps,
                         "test": {"accuracy": 0.95, "nll": 0.2, "ece": 0.02}})
            runs.append({**base, "model": DIRECT, "cell": f"students/s{eps}-{seed}",
                         "test": {"accuracy": 0.78, "nll": 0.4, "ece": 0.03}})
            for t in (1.0, 4.0):
                held, test = (values[seed] for values in STUDENTS[eps, t])
                runs.append({**base, "model": distilled_role(t), "cell": f"distilled-T{t:g}-t{eps}-{seed}",
                             "temperature": t, "beta": 0.0, "smoothness_index": 0.05 * t + eps,
                             "holdout_accuracy": held, "holdout": {"accuracy": held, "nll": 0.5},
                             "test": {"accuracy": test, "nll": 0.5, "ece": 0.04}})
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


def test_section_states_the_paired_verdicts_that_scipy_gives_at_the_temperatures_chosen_on_validation(tmp_path):
    write_students(tmp_path, validation_accuracy=0.80)  # distilled students (0.80-0.86) do better
    output = distillation_section(ReportContext(synthetic_distillation(), tmp_path))
    chosen, at_1, at_4 = output.verdicts
    assert (chosen["claim"], chosen["verdict"], chosen["predicts"], chosen["primary"]) == (
        "distillation", "supported", "deterioration", True)
    assert chosen["source"].startswith("Müller, Kornblith & Hinton 2019") and "Shen et al. 2021" in chosen["source"]
    assert chosen["contrast"] == ("student of the eps=0.1 teacher vs of the eps=0 teacher, each at the temperature "
                                  "chosen on validation for its seed")
    # paired by seed at the temperatures the validation split chose; the test split would have chosen T=1
    # for both teachers (a difference of -0.05, -0.055, -0.05)
    assert chosen["mean"] == pytest.approx(np.mean(np.subtract(CHOSEN_SMOOTH, CHOSEN_HARD)), abs=1e-12)
    interval = stats.ttest_rel(CHOSEN_SMOOTH, CHOSEN_HARD).confidence_interval(0.95)
    assert (chosen["high"] - chosen["low"]) / 2 == pytest.approx((interval.high - interval.low) / 2, rel=2e-5)
    for verdict, t, primary in ((at_1, 1.0, False), (at_4, 4.0, True)):
        assert (verdict["claim"], verdict["primary"]) == ("distillation-temperature", primary)
        assert verdict["source"].startswith("Chandrasegaran et al. 2022")
        assert verdict["contrast"] == f"eps=0.1 student, distilled at T={t:g} vs eps=0 student, distilled at T={t:g}"
        smooth, hard = STUDENTS[0.1, t][1], STUDENTS[0.0, t][1]
        assert verdict["mean"] == pytest.approx(np.mean(np.subtract(smooth, hard)), abs=1e-12)
    assert (tmp_path / "distillation_students.png").is_file() and (tmp_path / "distillation_temperatures.png").is_file()
    assert "Precondition, distillation beats training the student directly: met</strong>" in output.html
    assert "4 (seed 0), 4 (seed 1), 1 (seed 2)" in output.html and "1 (seed 0), 1 (seed 1), 1 (seed 2)" in output.html
    # per temperature: validation accuracy, test accuracy and how many seeds chose it, for each teacher
    t4 = re.search(r"<tr><td>4</td>(.*?)</tr>", output.html).group(1)
    assert re.findall(r"<td>([^<]*)</td>", t4)[2::3][:2] == ["2 of 3", "0 of 3"]
    rows = re.findall(r"<tr><td>(teacher|student[^<]*)</td><td>([0-9.]+)</td><td>3</td>", output.html)
    assert rows == [(TEACHER, "0"), (TEACHER, "0.1"), (distilled_role(1.0), "0"), (distilled_role(1.0), "0.1"),
                    (distilled_role(4.0), "0"), (distilled_role(4.0), "0.1"), (DIRECT, "0"), (DIRECT, "0.1")]
    # the figure's caption sits in the figure's own element, under its image
    assert re.search(r"<figure><img [^>]*><figcaption>Student test accuracy against the distillation", output.html)


def test_the_temperature_is_chosen_by_validation_accuracy_then_validation_nll():
    groups = ReportContext(synthetic_distillation(), ".").groups
    assert {s: r["temperature"] for s, r in chosen_students(groups, 0.0).items()} == {0: 4.0, 1: 4.0, 2: 1.0}
    tied = synthetic_distillation()
    for run in tied["runs"]:
        if run["model"].startswith("student, distilled") and run["label_smoothing"] == 0.1:
            run["holdout_accuracy"] = 0.85
            run["holdout"] = {"accuracy": 0.85, "nll": 0.3 if run["temperature"] == 4.0 else 0.6}
    groups = ReportContext(tied, ".").groups
    assert {s: r["temperature"] for s, r in chosen_students(groups, 0.1).items()} == {0: 4.0, 1: 4.0, 2: 4.0}


def test_the_claims_are_not_applicable_when_distillation_does_not_beat_direct_training(tmp_path):
    write_students(tmp_path, validation_accuracy=0.95)
    output = distillation_section(ReportContext(synthetic_distillation(), tmp_path))
    assert len(output.verdicts) == 3
    for verdict in output.verdicts:
        assert verdict["verdict"] == "not applicable"
        assert "does not beat the student trained directly" in verdict["reason"]
        assert "best student trained directly on the same images (eps=0): 0.9500" in verdict["reason"]
    assert "Precondition, distillation beats training the student directly: not met</strong>" in output.html


@pytest.mark.parametrize("config, sections", [(CONFIG, builder.DISTILLATION_SECTIONS),
                                              ({"dataset": "digits", "models": ["mlp"]}, builder.SWEEP_SECTIONS)])
def test_the_report_picks_the_sections_by_the_kind_of_run(config, sections):
    assert builder.sections_for({"config": config, "runs": []}) == sections
