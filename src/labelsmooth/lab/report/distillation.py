"""The distillation section of a lab report: does a label-smoothed teacher teach worse
(Müller, Kornblith & Hinton 2019, Section 4)?

A distillation run's ``results.json`` (written by :mod:`labelsmooth.lab.distill`) holds every
teacher and student as a run whose ``model`` names its role (:data:`TEACHER`, :data:`DIRECT`,
:func:`distilled_role`) and whose ``label_smoothing`` is the teacher's eps for a distilled
student. :func:`distillation_section` tabulates them with 95% intervals, plots student accuracy
against the teacher's smoothness index (``distillation_students.png``) and states the verdicts;
:func:`teacher_penultimate_section` is the penultimate-layer section of the teachers' sweep.
"""

from __future__ import annotations

from pathlib import Path

from ..rundir import load_results
from ..stats import estimate, paired_difference
from .html import embed_figure, table
from .overview import Condition, condition_label, group_runs, judge_decrease
from .penultimate import penultimate_section

__all__ = ["DIRECT", "TEACHER", "distillation_section", "distilled_role", "is_distillation",
           "teacher_penultimate_section"]

TEACHER, DIRECT = "teacher", "student, trained directly"
# an accuracy change smaller than this does not matter for the claim (the paper's MNIST effect:
# student error 0.74% -> 0.91%, 0.17 points)
ACCURACY_MARGIN = 0.001
CLAIM = "4"


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


def _best_by_holdout(groups: dict, eps: float) -> Condition | None:
    """The distilled-student condition of the eps teacher with the best mean hold-out accuracy."""
    candidates = [c for c in groups if c.model.startswith("student, distilled") and c.label_smoothing == eps
                  and _mean_of(groups[c], "holdout_accuracy") is not None]
    return max(candidates, key=lambda c: _mean_of(groups[c], "holdout_accuracy"), default=None)


def _comparison(groups: dict, treated: Condition, base: Condition, statement: str, how: str) -> dict:
    """Verdict on "a student of the smoothed teacher is less accurate" from per-seed pairs."""
    scope = f"{condition_label(treated, groups)} vs {condition_label(base, groups)}"
    treated_values, base_values = _accuracy(groups[treated]), _accuracy(groups[base])
    difference = paired_difference(treated_values, base_values)
    verdict, reason = judge_decrease(difference, ACCURACY_MARGIN,
                                     f"a loss of {ACCURACY_MARGIN * 100:g} accuracy points in the student")
    evidence = (f"{verdict.capitalize()}: {reason}. {how} Student test accuracy: "
                f"{condition_label(base, groups)} {estimate(list(base_values.values())).format()}, "
                f"{condition_label(treated, groups)} {estimate(list(treated_values.values())).format()}; "
                f"paired difference {difference.format() if difference else 'n/a (no shared seed)'}.")
    return dict(claim=CLAIM, statement=statement, scope=scope, verdict=verdict, evidence=evidence)


STATEMENT = ("A teacher trained with label smoothing makes a worse teacher for knowledge distillation "
             "(Müller et al. 2019, Section 4)")


def _verdicts(groups: dict) -> list[dict]:
    verdicts = []
    for eps in sorted({c.label_smoothing for c in groups if c.label_smoothing > 0}):
        for t in sorted({float(run["temperature"]) for c, runs in groups.items() if c.label_smoothing == eps
                         for run in runs.values() if "temperature" in run}):
            treated, base = Condition(distilled_role(t), "uniform", eps), Condition(distilled_role(t), "uniform", 0.0)
            if treated in groups and base in groups:
                verdicts.append(_comparison(groups, treated, base, STATEMENT,
                                            f"Both teachers distilled at the same temperature T={t:g}."))
        best_smoothed, best_hard = _best_by_holdout(groups, eps), _best_by_holdout(groups, 0.0)
        # (at one shared temperature this is the comparison above)
        if best_smoothed is not None and best_hard is not None and best_smoothed.model != best_hard.model:
            verdicts.append(_comparison(groups, best_smoothed, best_hard, STATEMENT,
                                        "Each teacher at the temperature whose students have the best mean "
                                        "hold-out accuracy (chosen without the test set)."))
    return verdicts


def _table_rows(groups: dict) -> list[list[str]]:
    rows = []
    def order(item) -> tuple:
        condition, runs = item
        return (condition.model != TEACHER, condition.model == DIRECT,
                next(iter(runs.values())).get("temperature", 0.0), condition.label_smoothing)

    for condition, runs in sorted(groups.items(), key=order):
        indices = [run["smoothness_index"] for run in runs.values() if run.get("smoothness_index") is not None]
        held = [run["holdout_accuracy"] for run in runs.values() if run.get("holdout_accuracy") is not None]
        metrics = [list(_test_values(runs, name).values()) for name in ("accuracy", "nll", "ece")]
        rows.append([condition.model, f"{condition.label_smoothing:g}", str(len(runs)),
                     estimate(indices).format(3) if indices else "-", estimate(held).format() if held else "-"]
                    + [estimate(values).format() if values else "-" for values in metrics])
    return rows


def _figure(groups: dict, path: Path) -> str:
    """Student test accuracy against the teacher's smoothness index; written to ``path`` and embedded."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    axes = figure.add_subplot()
    for index, eps in enumerate(sorted({c.label_smoothing for c in groups})):
        points = sorted((estimate([r["smoothness_index"] for r in runs.values()]).mean,
                         estimate(list(_accuracy(runs).values())), c.model) for c, runs in groups.items()
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


def distillation_section(results: dict, run_dir: Path) -> tuple[str, list[dict]]:
    """Teachers and students with 95% intervals, the accuracy-vs-smoothness figure, the verdicts."""
    config = results.get("config") or {}
    groups = group_runs(results)
    intro = (
        "<h2>Knowledge distillation: does a smoothed teacher teach worse?</h2>"
        f"<p>Teachers: MLP {'x'.join(map(str, config.get('teacher_widths', [])))}; students: MLP "
        f"{'x'.join(map(str, config.get('student_widths', [])))}, trained on "
        f"{config.get('dataset', '?')} with the same optimizer and epochs. A distilled student minimises "
        f"beta * CE(student, y) + (1 - beta) * T^2 * KL(softmax(teacher / T) || softmax(student / T)) "
        f"with beta = {config.get('beta', '?')}; the eps=0 teacher is distilled at several temperatures T "
        "(the paper's temperature sweep). Each student of seed s starts from the same weights and sees "
        "the same batches as the directly trained student of seed s, so differences are paired by seed. "
        "Smoothness index = K/(K-1) * mean over training images of (1 - teacher's probability of the true "
        "class at T): the mass a teacher puts on wrong classes on the label-smoothing scale (a teacher "
        "that fits eps-smoothed targets exactly has index eps). Hold-out accuracy (training images not "
        "used for training) chooses the best temperature without touching the test set.</p>")
    rows = table(["role", "eps (teacher's for distilled students)", "seeds", "teacher smoothness index",
                    "hold-out accuracy", "test accuracy", "test NLL", "test ECE"], _table_rows(groups))
    figure = _figure(groups, Path(run_dir) / "distillation_students.png")
    return intro + rows + f'<div class="figures">{figure}</div>', _verdicts(groups)


def teacher_penultimate_section(results: dict, run_dir: Path) -> tuple[str, list[dict]]:
    """The penultimate-layer section of the teachers' sweep, figures written into ``run_dir``."""
    teachers = Path(run_dir) / "teachers"
    html, verdicts = penultimate_section(load_results(teachers), teachers, Path(run_dir))
    verdicts = [{**v, "scope": f"teachers, {v['scope']}"} for v in verdicts]
    return html.replace("<h2>Penultimate layer:", "<h2>Teachers' penultimate layer:", 1), verdicts
