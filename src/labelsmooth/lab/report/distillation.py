"""The distillation section of a lab report: does a label-smoothed teacher teach worse
(Müller, Kornblith & Hinton 2019, Section 4)?

A distillation run's ``results.json`` (written by :mod:`labelsmooth.lab.distill`) holds every
teacher and student as a run whose ``model`` names its role (:data:`TEACHER`, :data:`DIRECT`,
:func:`distilled_role`) and whose ``label_smoothing`` is the teacher's eps for a distilled
student. :func:`distillation_section` tabulates them with 95% intervals, plots student accuracy
against the teacher's smoothness index (``distillation_students.png``) and states the verdicts;
:func:`teacher_penultimate_section` is the penultimate-layer section of the teachers' sweep.

The claim predicts a *deterioration* of the student's test accuracy (smallest effect that
matters: 0.1 points). Primary contrast: each teacher distilled at its temperature whose students
have the best mean validation accuracy (chosen without the test set); the comparisons at one
shared temperature are secondary. Precondition: distillation must work here at all: the best
student distilled from the eps = 0 teacher must beat the student trained directly (eps = 0) on
validation accuracy; otherwise whether a smoothed teacher distils *worse* cannot be tested and the
verdict is "not applicable".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..rundir import cell_file, load_results
from ..stats import BOUNDS, estimate
from .context import Condition, ReportContext, SectionOutput
from .html import embed_figure, escape, figure_grid, table
from .penultimate import penultimate_section
from .verdicts import Claim, judge

__all__ = ["DIRECT", "DISTILLATION", "TEACHER", "distillation_section", "distilled_role", "is_distillation",
           "teacher_penultimate_section"]

TEACHER, DIRECT = "teacher", "student, trained directly"
# an accuracy change smaller than this does not matter for the claim (the paper's MNIST effect:
# student error 0.74% -> 0.91%, 0.17 points)
ACCURACY_MARGIN = 0.001
DISTILLATION = Claim(
    "distillation", "A smoothed teacher distils worse",
    "A teacher trained with label smoothing makes a worse teacher for knowledge distillation: its students are "
    "less accurate, because smoothing erases information about how classes resemble each other.",
    "Müller, Kornblith & Hinton 2019, When does label smoothing help? (Section 4)", predicts="deterioration")


def distilled_role(temperature: float) -> str:
    """The role of a student distilled at ``temperature``.

    >>> distilled_role(4.0)
    'student, distilled at T=4'
    """
    return f"student, distilled at T={temperature:g}"


def is_distillation(config: dict) -> bool:
    """Whether a run's stored config is a distillation run's (it names the teachers' widths)."""
    return "teacher_widths" in config


def _test_values(runs: dict[int, dict], metric: str) -> dict[int, float]:
    """seed -> final test ``metric`` of the runs that have it."""
    found = {seed: (run.get("test") or {}).get(metric) for seed, run in runs.items()}
    return {seed: float(value) for seed, value in found.items() if value is not None}


def _accuracy(runs: dict[int, dict]) -> dict[int, float]:
    return _test_values(runs, "accuracy")


def _mean_of(runs: dict[int, dict], key: str) -> float | None:
    values = [run[key] for run in runs.values() if run.get(key) is not None]
    return sum(values) / len(values) if values else None


def _best_by_validation(groups: dict, eps: float) -> Condition | None:
    """The distilled-student condition of the eps teacher with the best mean validation accuracy."""
    candidates = [c for c in groups if c.model.startswith("student, distilled") and c.label_smoothing == eps
                  and _mean_of(groups[c], "holdout_accuracy") is not None]
    return max(candidates, key=lambda c: _mean_of(groups[c], "holdout_accuracy"), default=None)


def _validation_accuracies(context: ReportContext, runs: dict[int, dict]) -> list[float]:
    """Per run, its validation accuracy: recorded (distilled students), or from the hold-out logits
    of its sweep's ``final.npz`` (teachers and students trained directly: cell ``<sweep>/<key>``)."""
    values = []
    for run in runs.values():
        if run.get("holdout_accuracy") is not None:
            values.append(float(run["holdout_accuracy"]))
            continue
        folder, _, key = str(run.get("cell", "")).partition("/")
        path = (cell_file(context.run_dir / folder, {"cell": key}, "final.npz")
                if folder in ("teachers", "students") else None)
        if path is not None:
            with np.load(path, allow_pickle=False) as arrays:
                if "holdout_logits" in arrays.files and len(arrays["holdout_target"]):
                    logits = torch.from_numpy(arrays["holdout_logits"])
                    target = torch.from_numpy(arrays["holdout_target"])
                    values.append(float((logits.argmax(1) == target).double().mean()))
    return values


def _direct_validation_accuracy(context: ReportContext) -> float | None:
    """Mean validation accuracy of the eps = 0 students trained directly."""
    values = _validation_accuracies(context, context.groups.get(Condition(DIRECT, "uniform", 0.0), {}))
    return sum(values) / len(values) if values else None


def _distillation_does_not_help(context: ReportContext) -> str | None:
    best = _best_by_validation(context.groups, 0.0)
    direct = _direct_validation_accuracy(context)
    if best is None or direct is None:
        return ("the validation accuracy of the distilled students or of the directly trained students is not "
                "recorded, so whether distillation works here cannot be checked")
    distilled = _mean_of(context.groups[best], "holdout_accuracy")
    if distilled <= direct:
        return (f"no student distilled from the eps=0 teacher beats the student trained directly on the validation "
                f"split (best: {best.model}, {distilled:.4f}; trained directly: {direct:.4f}), so whether a "
                f"smoothed teacher distils worse cannot be tested here")
    return None


def _comparison(context: ReportContext, treated: Condition, base: Condition, *, primary: bool,
                not_applicable: str | None) -> dict:
    """Verdict on "a student of the smoothed teacher is less accurate" from per-seed pairs."""
    return judge(DISTILLATION, _accuracy(context.groups[treated]), _accuracy(context.groups[base]),
                 section="distillation", split="test", contrast=context.contrast(treated, base),
                 quantity="student test accuracy", primary=primary, better="higher", margin=ACCURACY_MARGIN,
                 scope=context.scope, bounds="accuracy", not_applicable=not_applicable)


def _verdicts(context: ReportContext) -> list[dict]:
    groups, verdicts = context.groups, []
    precondition = _distillation_does_not_help(context)
    largest = max((c.label_smoothing for c in groups), default=0.0)
    for eps in sorted({c.label_smoothing for c in groups if c.label_smoothing > 0}):
        best_smoothed, best_hard = _best_by_validation(groups, eps), _best_by_validation(groups, 0.0)
        chosen = None
        if best_smoothed is not None and best_hard is not None:
            chosen = (best_smoothed, best_hard)
            verdicts.append(_comparison(context, *chosen, primary=eps == largest, not_applicable=precondition))
        for t in sorted({float(run["temperature"]) for c, runs in groups.items() if c.label_smoothing == eps
                         for run in runs.values() if "temperature" in run}):
            pair = (Condition(distilled_role(t), "uniform", eps), Condition(distilled_role(t), "uniform", 0.0))
            if pair[0] in groups and pair[1] in groups and pair != chosen:
                verdicts.append(_comparison(context, *pair, primary=False, not_applicable=precondition))
    return verdicts


def _table_rows(context: ReportContext) -> list[list[str]]:
    rows = []
    def order(item) -> tuple:
        condition, runs = item
        return (condition.model != TEACHER, condition.model == DIRECT,
                next(iter(runs.values())).get("temperature", 0.0), condition.label_smoothing)

    for condition, runs in sorted(context.groups.items(), key=order):
        indices = [run["smoothness_index"] for run in runs.values() if run.get("smoothness_index") is not None]
        held = _validation_accuracies(context, runs)
        metrics = [(name, list(_test_values(runs, name).values())) for name in ("accuracy", "nll", "ece")]
        rows.append([condition.model, f"{condition.label_smoothing:g}", str(len(runs)),
                     estimate(indices).format(3) if indices else "-",
                     estimate(held, BOUNDS["accuracy"]).format() if held else "-"]
                    + [estimate(values, BOUNDS[name]).format() if values else "-" for name, values in metrics])
    return rows


def _figure(groups: dict, path: Path) -> str:
    """Student test accuracy against the teacher's smoothness index; written to ``path`` and embedded."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    axes = figure.add_subplot()
    for index, eps in enumerate(sorted({c.label_smoothing for c in groups})):
        points = sorted((estimate([r["smoothness_index"] for r in runs.values()]).mean,
                         estimate(list(_accuracy(runs).values()), BOUNDS["accuracy"]), c.model)
                        for c, runs in groups.items()
                        if c.label_smoothing == eps and c.model.startswith("student, distilled"))
        if points:
            x = [p[0] for p in points]
            axes.errorbar(x, [p[1].mean for p in points], marker="o", color=f"C{index}", capsize=3,
                          yerr=[[p[1].mean - (p[1].low if p[1].has_interval else p[1].mean) for p in points],
                                [(p[1].high if p[1].has_interval else p[1].mean) - p[1].mean for p in points]],
                          label=f"distilled from the eps={eps:g} teacher")
            for xi, p in zip(x, points):
                axes.annotate(p[2].rsplit(" ", 1)[-1], (xi, p[1].mean), fontsize=7, xytext=(3, 3),
                              textcoords="offset points")
        direct = Condition(DIRECT, "uniform", eps)
        if direct in groups and _accuracy(groups[direct]):
            axes.axhline(estimate(list(_accuracy(groups[direct]).values())).mean, color=f"C{index}",
                         linestyle="--", linewidth=1, label=f"student trained directly, eps={eps:g}")
    axes.set_xlabel("teacher's smoothness index at the distillation temperature")
    axes.set_ylabel("student test accuracy (mean over seeds, 95% CI)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return embed_figure(figure, path, "Student test accuracy against the teacher's smoothness index")


def distillation_section(context: ReportContext) -> SectionOutput:
    """Teachers and students with 95% intervals, the accuracy-vs-smoothness figure, the verdicts."""
    config, groups = context.config, context.groups
    dataset = escape(config.get("dataset", "?"))
    intro = (
        f"<p>Teachers: MLP {'x'.join(map(str, config.get('teacher_widths', [])))}; students: MLP "
        f"{'x'.join(map(str, config.get('student_widths', [])))}, trained on {dataset} with the same optimizer and "
        f"epochs. A distilled student minimises beta * CE(student, y) + (1 - beta) * T^2 * "
        f"KL(softmax(teacher / T) || softmax(student / T)) with beta = {escape(config.get('beta', '?'))} (Hinton, "
        "Vinyals & Dean 2015); the eps=0 teacher is distilled at several temperatures T (the paper's temperature "
        "sweep). Each student of seed s starts from the same weights and sees the same batches as the directly "
        "trained student of seed s, so differences are paired by seed. Smoothness index = K/(K-1) * mean over "
        "training images of (1 - teacher's probability of the true class at T): the mass a teacher puts on "
        "wrong classes on the label-smoothing scale (a teacher that fits eps-smoothed targets exactly has index "
        "eps). Validation accuracy (training images not used for training) chooses the best temperature "
        "without touching the test set.</p>")
    rows = table(["role", "eps (teacher's for distilled students)", "seeds", "teacher smoothness index",
                  "validation accuracy", "test accuracy", "test NLL", "test ECE"], _table_rows(context))
    figure = _figure(groups, Path(context.run_dir) / "distillation_students.png")
    return SectionOutput("Knowledge distillation: does a smoothed teacher teach worse?",
                         intro + rows + figure_grid([figure]), _verdicts(context))


def teacher_penultimate_section(context: ReportContext) -> SectionOutput:
    """The penultimate-layer section of the teachers' sweep, figures written into the run directory."""
    teachers = Path(context.run_dir) / "teachers"
    output = penultimate_section(ReportContext(load_results(teachers), teachers), context.run_dir)
    verdicts = [{**v, "contrast": f"teachers, {v['contrast']}", "scope": context.scope} for v in output.verdicts]
    return SectionOutput("Teachers' penultimate layer: tight, equidistant clusters?", output.html, verdicts)
