"""The distillation section of a lab report: does a label-smoothed teacher teach worse
(Müller, Kornblith & Hinton 2019, Section 4; against them Shen et al. 2021), and does the answer
depend on the distillation temperature (Chandrasegaran et al. 2022)?

A distillation run's ``results.json`` (written by :mod:`labelsmooth.lab.distill`) holds every
teacher and student as a run whose ``model`` names its role (:data:`TEACHER`, :data:`DIRECT`,
:func:`distilled_role`) and whose ``label_smoothing`` is the teacher's eps for a distilled
student. :func:`distillation_section` tabulates them with 95% intervals, gives the student's test
accuracy at every temperature for every teacher, plots it against the temperature
(``distillation_temperatures.png``) and against the teacher's smoothness index
(``distillation_students.png``), and states the verdicts;
:func:`teacher_penultimate_section` is the penultimate-layer section of the teachers' sweep.

**The temperature is chosen on the validation split**, per teacher and per seed
(:func:`chosen_students`): the temperature whose student has the highest validation accuracy,
ties broken by the lower validation NLL, then the lower temperature. The test set is read for the
final numbers only.

The claims predict a *deterioration* of the student's test accuracy (smallest effect that
matters: 0.1 points). Müller et al.'s claim (:data:`DISTILLATION`): primary contrast, each teacher
at its chosen temperature (largest eps against eps = 0). Chandrasegaran et al.'s
(:data:`TEMPERATURE`): the two teachers at one shared temperature, primary at the highest
temperature, secondary at the others (at T=1 they expect no harm). Precondition of both:
distillation must help here at all: the students distilled from the eps = 0 teacher (at their
chosen temperatures) must beat every student trained directly (hard labels and each eps) on mean
validation accuracy; otherwise whether a smoothed teacher distils *worse* cannot be tested and the
verdicts are "not applicable".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..rundir import cell_file, load_results
from ..stats import BOUNDS, estimate, paired_difference
from .context import Condition, ReportContext, SectionOutput
from .html import embed_figure, escape, figure_grid, table
from .penultimate import penultimate_section
from .verdicts import Claim, judge

__all__ = ["DIRECT", "DISTILLATION", "TEACHER", "TEMPERATURE", "chosen_students", "distillation_section",
           "distilled_role", "is_distillation", "teacher_penultimate_section"]

TEACHER, DIRECT = "teacher", "student, trained directly"
# an accuracy change smaller than this does not matter for the claim (the paper's MNIST effect:
# student error 0.74% -> 0.91%, 0.17 points)
ACCURACY_MARGIN = 0.001
DISTILLATION = Claim(
    "distillation", "A smoothed teacher distils worse",
    "A teacher trained with label smoothing makes a worse teacher for knowledge distillation: its students are "
    "less accurate, because smoothing erases information about how classes resemble each other. Shen et al. "
    "2021 find no such harm (a verdict of 'not supported' agrees with them).",
    "Müller, Kornblith & Hinton 2019, When does label smoothing help? (Section 4); against it: Shen et al. 2021, "
    "Is label smoothing truly incompatible with knowledge distillation? An empirical study",
    predicts="deterioration")
TEMPERATURE = Claim(
    "distillation-temperature", "A smoothed teacher distils worse at a high temperature",
    "A teacher trained with label smoothing is fine at temperature 1 but gives less accurate students at higher "
    "distillation temperatures, where its softened outputs carry little information about the classes.",
    "Chandrasegaran et al. 2022, Revisiting label smoothing and knowledge distillation compatibility: what was "
    "missing?", predicts="deterioration")


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


def _validation_key(run: dict) -> tuple:
    """Higher is preferred: validation accuracy, then lower validation NLL, then lower temperature."""
    nll = (run.get("holdout") or {}).get("nll")
    return run["holdout_accuracy"], -nll if nll is not None else 0.0, -float(run["temperature"])


def chosen_students(groups: dict, eps: float) -> dict[int, dict]:
    """seed -> the student distilled from the eps teacher of that seed at the temperature the
    validation split chose: the highest validation accuracy, ties to the lower validation NLL, then
    to the lower temperature. The test set plays no part.

    >>> from labelsmooth.lab.report.context import Condition
    >>> run = lambda t, acc, nll: {"temperature": t, "holdout_accuracy": acc, "holdout": {"nll": nll}}
    >>> groups = {Condition(distilled_role(t), "uniform", 0.0): {0: run(t, acc, nll)}
    ...           for t, acc, nll in ((1.0, 0.80, 0.6), (4.0, 0.85, 0.5), (8.0, 0.85, 0.4))}
    >>> chosen_students(groups, 0.0)[0]["temperature"]
    8.0
    """
    candidates: dict[int, list[dict]] = {}
    for condition, runs in groups.items():
        if condition.model.startswith("student, distilled") and condition.label_smoothing == eps:
            for seed, run in runs.items():
                if run.get("holdout_accuracy") is not None:
                    candidates.setdefault(seed, []).append(run)
    return {seed: max(runs, key=_validation_key) for seed, runs in sorted(candidates.items())}


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


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _precondition(context: ReportContext) -> tuple[bool, str]:
    """(whether distillation beats direct training, the check in words), on mean validation accuracy:
    the eps = 0 teacher's students at their chosen temperatures against every student trained directly."""
    distilled = _mean(run["holdout_accuracy"] for run in chosen_students(context.groups, 0.0).values())
    direct = {c.label_smoothing: _mean(_validation_accuracies(context, runs))
              for c, runs in context.groups.items() if c.model == DIRECT}
    direct = {eps: value for eps, value in direct.items() if value is not None}
    if distilled is None or not direct:
        return False, ("the validation accuracy of the distilled students or of the directly trained students is not "
                       "recorded, so whether distillation works here cannot be checked")
    best_eps = max(direct, key=direct.get)
    numbers = (f"students distilled from the eps=0 teacher, each at the temperature chosen on validation: "
               f"{distilled:.4f}; best student trained directly on the same images (eps={best_eps:g}): "
               f"{direct[best_eps]:.4f}; mean validation accuracy")
    if distilled <= direct[best_eps]:
        return False, (f"distillation does not beat the student trained directly ({numbers}), so whether a "
                       f"smoothed teacher distils worse cannot be tested here")
    return True, f"distillation beats the student trained directly ({numbers})"


def _comparison(context: ReportContext, claim: Claim, treated: dict[int, float], base: dict[int, float], *,
                contrast: str, primary: bool, not_applicable: str | None) -> dict:
    """Verdict on "a student of the smoothed teacher is less accurate" from per-seed pairs."""
    return judge(claim, treated, base, section="distillation", split="test", contrast=contrast,
                 quantity="student test accuracy", primary=primary, better="higher", margin=ACCURACY_MARGIN,
                 scope=context.scope, bounds="accuracy", not_applicable=not_applicable)


def _chosen_accuracy(groups: dict, eps: float) -> dict[int, float]:
    return {seed: float(run["test"]["accuracy"]) for seed, run in chosen_students(groups, eps).items()
            if (run.get("test") or {}).get("accuracy") is not None}


def _temperatures(groups: dict, eps: float) -> list[float]:
    return sorted({float(run["temperature"]) for c, runs in groups.items() if c.label_smoothing == eps
                   and c.model.startswith("student, distilled") for run in runs.values() if "temperature" in run})


def _verdicts(context: ReportContext) -> list[dict]:
    groups, verdicts = context.groups, []
    met, check = _precondition(context)
    precondition = None if met else check
    smoothed = sorted({c.label_smoothing for c in groups if c.label_smoothing > 0})
    hard = _chosen_accuracy(groups, 0.0)
    for eps in smoothed:
        treated = _chosen_accuracy(groups, eps)
        if treated and hard:
            verdicts.append(_comparison(
                context, DISTILLATION, treated, hard, primary=eps == smoothed[-1], not_applicable=precondition,
                contrast=f"student of the eps={eps:g} teacher vs of the eps=0 teacher, each at the temperature "
                         f"chosen on validation for its seed"))
        shared = [t for t in _temperatures(groups, eps) if t in _temperatures(groups, 0.0)]
        for t in shared:
            pair = (Condition(distilled_role(t), "uniform", eps), Condition(distilled_role(t), "uniform", 0.0))
            verdicts.append(_comparison(context, TEMPERATURE, _accuracy(groups[pair[0]]), _accuracy(groups[pair[1]]),
                                        contrast=context.contrast(*pair), not_applicable=precondition,
                                        primary=eps == smoothed[-1] and t == shared[-1]))
    return verdicts


def _temperature_table(context: ReportContext) -> str:
    """Per temperature: each teacher's students' validation and test accuracy, how many seeds chose
    it, and the paired test difference smoothed - unsmoothed teacher; the direct baselines below."""
    groups = context.groups
    teachers = sorted({c.label_smoothing for c in groups if c.model.startswith("student, distilled")})
    chosen = {eps: [float(run["temperature"]) for run in chosen_students(groups, eps).values()] for eps in teachers}
    rows = []
    for t in sorted({t for eps in teachers for t in _temperatures(groups, eps)}):
        row = [f"{t:g}"]
        for eps in teachers:
            runs = groups.get(Condition(distilled_role(t), "uniform", eps), {})
            held = [run["holdout_accuracy"] for run in runs.values() if run.get("holdout_accuracy") is not None]
            test = list(_accuracy(runs).values())
            row += [estimate(held, BOUNDS["accuracy"]).format() if held else "-",
                    estimate(test, BOUNDS["accuracy"]).format() if test else "-",
                    f"{chosen[eps].count(t)} of {len(chosen[eps])}"]
        for eps in teachers[1:]:
            pair = [groups.get(Condition(distilled_role(t), "uniform", e), {}) for e in (eps, 0.0)]
            difference = paired_difference(_accuracy(pair[0]), _accuracy(pair[1]), BOUNDS["accuracy"])
            row.append("-" if difference is None else difference.format())
        rows.append(row)
    head = ["temperature T"]
    for eps in teachers:
        head += [f"eps={eps:g} teacher: validation accuracy", f"eps={eps:g} teacher: test accuracy",
                 f"eps={eps:g} teacher: seeds choosing T"]
    head += [f"test accuracy, eps={eps:g} teacher - eps=0 teacher (paired)" for eps in teachers[1:]]
    direct = [(c.label_smoothing, list(_accuracy(runs).values())) for c, runs in sorted(groups.items())
              if c.model == DIRECT]
    baselines = "; ".join(f"eps={eps:g}: {estimate(v, BOUNDS['accuracy']).format()}" for eps, v in direct if v)
    choices = [[f"{eps:g}",
                ", ".join(f"{t:g} (seed {seed})" for seed, t in zip(chosen_students(groups, eps), chosen[eps])),
                estimate(list(_chosen_accuracy(groups, eps).values()), BOUNDS["accuracy"]).format()]
               for eps in teachers if chosen[eps]]
    return (table(head, rows) + table(["teacher's eps", "temperature chosen on validation",
                                       "student test accuracy at the chosen temperature"], choices)
            + f"<p>Students trained directly on the same images, test accuracy: {escape(baselines)}.</p>")


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


def _smoothness(runs: dict[int, dict]) -> float:
    return estimate([run["smoothness_index"] for run in runs.values()]).mean


def _temperature(runs: dict[int, dict]) -> float:
    return float(next(iter(runs.values()))["temperature"])


def _figure(groups: dict, path: Path, x_of, xlabel: str, caption: str, *, log2: bool = False) -> str:
    """Student test accuracy (mean, 95% CI) of each teacher's distilled students against ``x_of(runs)``,
    the directly trained students as dashed lines; written to ``path`` and embedded."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    axes = figure.add_subplot()
    for index, eps in enumerate(sorted({c.label_smoothing for c in groups})):
        points = sorted((x_of(runs), estimate(list(_accuracy(runs).values()), BOUNDS["accuracy"]), c.model)
                        for c, runs in groups.items()
                        if c.label_smoothing == eps and c.model.startswith("student, distilled") and _accuracy(runs))
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
    if log2:
        axes.set_xscale("log", base=2)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("student test accuracy (mean over seeds, 95% CI)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return embed_figure(figure, path, caption)


def distillation_section(context: ReportContext) -> SectionOutput:
    """Teachers and students with 95% intervals, the per-temperature table, the figures, the verdicts."""
    config, groups = context.config, context.groups
    dataset = escape(config.get("dataset", "?"))
    size = config.get("student_train_size")
    images = f"a stratified sample of {size:,} of the teachers' training images" if size else "the teachers' images"
    met, check = _precondition(context)
    intro = (
        f"<p>Teachers: MLP {'x'.join(map(str, config.get('teacher_widths', [])))}, trained on the whole training "
        f"split of {dataset} for {escape(config.get('epochs', '?'))} epochs; students: MLP "
        f"{'x'.join(map(str, config.get('student_widths', [])))}, trained on {escape(images)} for "
        f"{escape(config.get('student_epochs') or config.get('epochs', '?'))} epochs, with the same optimizer. "
        f"A distilled student minimises beta * CE(student, y) + (1 - beta) * T^2 * "
        f"KL(softmax(teacher / T) || softmax(student / T)) with beta = {escape(config.get('beta', '?'))} (Hinton, "
        "Vinyals & Dean 2015), at every temperature T for every teacher. Each student of seed s starts from the "
        "same weights and sees the same batches as the directly trained student of seed s, so differences are "
        "paired by seed. The temperature of each teacher is chosen per seed on the validation split (training "
        "images not used for training): the highest validation accuracy of the student, ties to the lower "
        "validation NLL; the test set gives the final numbers only. Smoothness index = K/(K-1) * mean over the "
        "students' training images of (1 - teacher's probability of the true class at T): the mass a teacher "
        "puts on wrong classes on the label-smoothing scale (a teacher that fits eps-smoothed targets exactly "
        "has index eps).</p>"
        f"<p><strong>Precondition, distillation beats training the student directly: "
        f"{'met' if met else 'not met'}</strong> ({escape(check)}). The verdicts on the smoothed teacher are "
        "judged only when it is met.</p>")
    rows = table(["role", "eps (teacher's for distilled students)", "seeds", "teacher smoothness index",
                  "validation accuracy", "test accuracy", "test NLL", "test ECE"], _table_rows(context))
    run_dir = Path(context.run_dir)
    figures = [_figure(groups, run_dir / "distillation_temperatures.png", _temperature, "distillation temperature T",
                       "Student test accuracy against the distillation temperature, for each teacher", log2=True),
               _figure(groups, run_dir / "distillation_students.png", _smoothness,
                       "teacher's smoothness index at the distillation temperature",
                       "Student test accuracy against the teacher's smoothness index")]
    return SectionOutput("Knowledge distillation: does a smoothed teacher teach worse?",
                         intro + _temperature_table(context) + rows + figure_grid(figures), _verdicts(context))


def teacher_penultimate_section(context: ReportContext) -> SectionOutput:
    """The penultimate-layer section of the teachers' sweep, figures written into the run directory."""
    teachers = Path(context.run_dir) / "teachers"
    output = penultimate_section(ReportContext(load_results(teachers), teachers), context.run_dir)
    verdicts = [{**v, "contrast": f"teachers, {v['contrast']}", "scope": context.scope} for v in output.verdicts]
    return SectionOutput("Teachers' penultimate layer: tight, equidistant clusters?", output.html, verdicts)
