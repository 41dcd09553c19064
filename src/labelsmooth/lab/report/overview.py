"""The overview of a lab report and the verdict rule every section uses.

Sections (each ``(results, run_dir) -> (html_fragment, verdicts)``): the configuration, the final
test metrics with paired differences to eps = 0, over-fitting (where validation NLL is lowest),
and the per-epoch curves (``curves_<metric>.png``, one line per condition with a min-max band
over seeds).

A verdict is a dict with the keys of :data:`VERDICT_KEYS` about one claim of :data:`CLAIMS`;
``verdict`` is one of :data:`VERDICTS`. Verdicts follow from the numbers by one rule
(:func:`judge`): a claim that eps > 0 improves a quantity is *supported* when the 95% interval of
the paired difference to eps = 0 lies entirely on the improving side of 0, *not supported* when
the interval rules out an improvement as large as the claim's smallest effect that matters
(including a significant change the other way), and *inconclusive* otherwise (also with a single
seed, where there is no interval).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..stats import Estimate, estimate, paired_difference
from .html import embed_figure, table

__all__ = [
    "CLAIMS",
    "CLAIM_TESTS",
    "HISTORY_METRICS",
    "VERDICTS",
    "VERDICT_KEYS",
    "Condition",
    "baseline_of",
    "claim_verdicts",
    "condition_label",
    "config_section",
    "curves_section",
    "group_runs",
    "judge",
    "judge_decrease",
    "final_metric",
    "overfitting_section",
    "per_seed",
    "summary_section",
]

VERDICTS = ("supported", "not supported", "inconclusive")
VERDICT_KEYS = ("claim", "statement", "scope", "verdict", "evidence")

# claim -> (topic, the claim and its source); the report states them above its verdicts
CLAIMS: dict[str, tuple[str, str]] = {
    "1": ("over-fitting", "Label smoothing over-fits less. Source: a blog experiment: a small CNN with "
          "three convolutions trained for 200 epochs (SGD, learning rate 0.001, momentum 0.9, batch 32) "
          "on 6,000 Fashion-MNIST training images with eps in {0, 0.05, 0.1}, comparing the validation "
          "loss per epoch."),
    "2": ("calibration", "A model trained with label smoothing is better calibrated: its confidence "
          "matches its accuracy more closely, as post-hoc calibration (temperature scaling, Platt "
          "scaling, isotonic regression) would otherwise have to do. Sources: a blog post on label "
          "smoothing and over-confidence; Müller, Kornblith & Hinton 2019, When does label smoothing "
          "help? (Section 3, Table 3)."),
    "3": ("accuracy", "Label smoothing improves accuracy: about 0.2 points of top-1 and top-5 accuracy "
          "on ImageNet (1,000 classes, eps = 0.1). Source: Szegedy et al. 2016, Rethinking the "
          "Inception Architecture for Computer Vision (Inception-v3)."),
    "4": ("penultimate clusters and distillation", "Label smoothing makes the penultimate-layer "
          "activations of each class a tight cluster, equidistant from the other classes' clusters; "
          "it erases information about how classes resemble each other, so a teacher trained with it "
          "distils a worse student. Source: Müller, Kornblith & Hinton 2019, When does label smoothing "
          "help? (Sections 2 and 4)."),
}

# history key -> (axis label, which direction is better)
HISTORY_METRICS: dict[str, tuple[str, str]] = {
    "train_loss": ("training loss (smoothed objective, running mean over the epoch)", "lower"),
    "val_loss": ("validation loss, smoothed (the blog experiment's curve: its floor rises with eps)", "lower"),
    "val_nll": ("validation NLL (unsmoothed; comparable across eps)", "lower"),
    "val_accuracy": ("validation accuracy", "higher"),
    "val_ece": ("validation ECE (15 equal-width bins)", "lower"),
}
# test-split keys shown first, in this order; any other numeric key follows
TEST_METRICS = ("accuracy", "nll", "ece", "loss")


# 1. Grouping ----------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Condition:
    """One arm of the grid: everything but the seed."""

    model: str
    distribution: str
    label_smoothing: float


def _condition(run: dict, config: dict) -> Condition:
    return Condition(str(run.get("model", config.get("model", ""))),
                     str(run.get("distribution", config.get("distribution", "uniform"))),
                     float(run["label_smoothing"]))


def group_runs(results: dict) -> dict[Condition, dict[int, dict]]:
    """condition -> seed -> run, conditions sorted by (model, distribution, eps)."""
    config = results.get("config") or {}
    groups: dict[Condition, dict[int, dict]] = {}
    for run in results["runs"]:
        groups.setdefault(_condition(run, config), {})[int(run["seed"])] = run
    return dict(sorted(groups.items()))


def baseline_of(condition: Condition, groups: dict) -> Condition | None:
    """The eps = 0 condition a treatment is paired with (same model; same distribution if any)."""
    if condition.label_smoothing == 0.0:
        return None
    same = Condition(condition.model, condition.distribution, 0.0)
    if same in groups:
        return same
    return next((c for c in groups if c.model == condition.model and c.label_smoothing == 0.0), None)


def condition_label(condition: Condition, groups: dict) -> str:
    """``"eps=0.1"``, plus distribution / model when the grid varies them."""
    label = f"eps={condition.label_smoothing:g}"
    if len({c.distribution for c in groups}) > 1:
        label += f" {condition.distribution}"
    if len({c.model for c in groups}) > 1:
        label += f" {condition.model}"
    return label


def best_epoch(run: dict) -> tuple[int, float, float] | None:
    """(epoch of minimum val_nll, that minimum, final val_nll) of one run, None without history."""
    history = [h for h in run.get("history") or [] if h.get("val_nll") is not None]
    if not history:
        return None
    best = min(history, key=lambda h: h["val_nll"])
    return int(best["epoch"]), float(best["val_nll"]), float(history[-1]["val_nll"])


def overfitting_rise(run: dict) -> float | None:
    """How far val_nll rose from its minimum by the final epoch (0 when the last epoch is best)."""
    found = best_epoch(run)
    return None if found is None else found[2] - found[1]


def final_metric(name: str) -> Callable[[dict], float | None]:
    """Per-run accessor of a final test-split metric (None for unfinished runs)."""
    def value(run: dict) -> float | None:
        found = (run.get("test") or {}).get(name)
        return None if found is None else float(found)
    return value


def per_seed(runs: dict[int, dict], value: Callable[[dict], float | None]) -> dict[int, float]:
    """seed -> ``value(run)`` of the runs where it is not None."""
    found = {seed: value(run) for seed, run in runs.items()}
    return {seed: v for seed, v in found.items() if v is not None}


# 2. Verdicts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimTest:
    """How one claim of :data:`CLAIMS` is tested on a run: a per-run quantity eps > 0 should improve."""

    claim: str
    statement: str
    quantity: str
    value: Callable[[dict], float | None]
    better: str                                  # "lower" or "higher"
    margin: Callable[[list[float]], float]       # baseline values -> smallest effect that matters
    margin_text: str
    not_applicable: Callable[[list[dict]], str | None] = lambda baseline_runs: None
    also_report: tuple[str, ...] = ()            # test metrics whose paired differences are shown


def judge(difference: Estimate | None, better: str, margin: float) -> str:
    """Verdict on "eps > 0 improves the quantity" from the paired difference (eps - baseline).

    >>> judge(estimate([-0.3, -0.2, -0.25]), "lower", 0.01)
    'supported'
    >>> judge(estimate([0.001, -0.001, 0.0]), "lower", 0.01)
    'not supported'
    >>> judge(estimate([-0.3, 0.2, 0.05]), "lower", 0.01)
    'inconclusive'
    """
    if better not in ("lower", "higher"):
        raise ValueError(f"better: expected 'lower' or 'higher', got {better!r}")
    if difference is None or not difference.has_interval:
        return "inconclusive"
    sign = -1.0 if better == "lower" else 1.0
    improvement_low, improvement_high = sorted((sign * difference.low, sign * difference.high))
    if improvement_low > 0:
        return "supported"
    if improvement_high < margin:
        return "not supported"
    return "inconclusive"


def judge_decrease(difference: Estimate | None, margin: float, effect: str) -> tuple[str, str]:
    """(verdict, reason) on "eps > 0 lowers the quantity", from the per-seed paired difference.

    The rule is the report's (:func:`judge`); ``effect`` names the
    smallest decrease that matters, e.g. ``"a decrease of 0.03"``.
    """
    verdict = judge(difference, "lower", margin)
    reason = {
        "supported": "the 95% interval of the paired difference lies below 0",
        "not supported": f"the interval rules out {effect} or more",
        "inconclusive": ("one seed gives no interval; run more seeds"
                         if difference is None or not difference.has_interval else
                         f"the interval contains both 0 and {effect}"),
    }[verdict]
    return verdict, reason



# the baseline over-fits when its val NLL ends at least 1% above its minimum (and, with several
# seeds, the rise's interval excludes 0)
OVERFIT_MIN_RELATIVE_RISE = 0.01


def _baseline_does_not_overfit(baseline_runs: list[dict]) -> str | None:
    rises = [r for r in map(overfitting_rise, baseline_runs) if r is not None]
    minima = [best_epoch(run)[1] for run in baseline_runs if best_epoch(run) is not None]
    if not rises:
        return "the eps=0 baseline has no val_nll history"
    rise = estimate(rises)
    relative = rise.mean / max(sum(minima) / len(minima), 1e-12)
    if relative < OVERFIT_MIN_RELATIVE_RISE or (rise.has_interval and rise.low <= 0):
        return (f"the eps=0 baseline does not over-fit here (its val NLL rises only {rise.format()} "
                f"from its minimum, {100 * relative:.1f}% of the minimum), so the claim cannot be tested "
                f"on this run; try `labelsmooth reproduce overfitting`")
    return None


CLAIM_TESTS: dict[str, ClaimTest] = {
    "overfitting": ClaimTest(
        claim="1", statement="Label smoothing over-fits less (a blog experiment on Fashion-MNIST)",
        quantity="rise of val NLL from its minimum to the final epoch", value=overfitting_rise,
        better="lower", margin=lambda base: 0.1 * sum(base) / len(base),
        margin_text="10% of the baseline's rise", not_applicable=_baseline_does_not_overfit,
        also_report=("nll", "accuracy")),
    "calibration": ClaimTest(
        claim="2", statement="The model trained with label smoothing is better calibrated "
        "(a blog post; Müller et al. 2019; raw test ECE, before any temperature scaling)",
        quantity="test ECE", value=final_metric("ece"), better="lower",
        margin=lambda base: 0.1 * sum(base) / len(base), margin_text="10% of the baseline's ECE"),
    "accuracy": ClaimTest(
        claim="3", statement="Label smoothing improves accuracy (Szegedy et al. 2016 report about +0.2 "
        "points on ImageNet; tested here on this run's data)",
        quantity="test accuracy", value=final_metric("accuracy"), better="higher",
        margin=lambda base: 0.002, margin_text="0.2 accuracy points, the ImageNet effect of Szegedy et al. 2016"),
}


def claim_verdicts(test: ClaimTest, groups: dict) -> list[dict]:
    """One verdict per eps > 0 condition that has an eps = 0 baseline."""
    verdicts = []
    for condition, runs in groups.items():
        base = baseline_of(condition, groups)
        if base is None:
            continue
        scope = f"{condition_label(condition, groups)} vs {condition_label(base, groups)}"
        treated, baseline = per_seed(runs, test.value), per_seed(groups[base], test.value)
        if not treated or not baseline:
            continue
        difference = paired_difference(treated, baseline)
        reason = test.not_applicable(list(groups[base].values()))
        margin = test.margin(list(baseline.values()))
        evidence = (f"{test.quantity}: eps=0 {estimate(list(baseline.values())).format()}, "
                    f"{condition_label(condition, groups)} {estimate(list(treated.values())).format()}; "
                    f"paired difference {difference.format() if difference else 'n/a (no shared seed)'}"
                    f" ({test.better} is better; smallest effect that matters: {margin:.4g}, "
                    f"{test.margin_text}).")
        for name in test.also_report:
            extra = paired_difference(per_seed(runs, final_metric(name)),
                                      per_seed(groups[base], final_metric(name)))
            if extra is not None:
                evidence += f" Final test {name}: paired difference {extra.format()}."
        verdict = "inconclusive" if reason else judge(difference, test.better, margin)
        explanation = _explain(verdict, reason, difference, margin, test.better)
        verdicts.append(dict(claim=test.claim, statement=test.statement, scope=scope,
                             verdict=verdict, evidence=f"{explanation} {evidence}"))
    return verdicts


def _explain(verdict: str, reason: str | None, difference: Estimate | None, margin: float,
             better: str) -> str:
    if reason:
        return f"Inconclusive: {reason}."
    if difference is None or not difference.has_interval:
        return "Inconclusive: one seed gives no confidence interval; run more seeds."
    worse = difference.low > 0 if better == "lower" else difference.high < 0
    return {
        "supported": "Supported: the 95% interval of the paired difference excludes 0 on the "
                     "improving side.",
        "not supported": "Not supported: the 95% interval of the paired difference lies on the "
                         "worsening side of 0, so smoothing made it worse." if worse else
                         f"Not supported: the interval rules out an improvement of {margin:.4g} "
                         f"or more.",
        "inconclusive": f"Inconclusive: the interval contains both 0 and an improvement of "
                        f"{margin:.4g}; more seeds would narrow it.",
    }[verdict]


# 3. Sections ----------------------------------------------------------------------------------


def config_section(results: dict, run_dir: Path) -> tuple[str, list[dict]]:
    """The run's configuration, one row per key."""
    config = results.get("config") or {}
    rows = [[key, value if isinstance(value, str) else json.dumps(value)]
            for key, value in config.items()]
    return "<h2>Configuration</h2>" + table(["setting", "value"], rows), []


def _test_metric_names(groups: dict) -> list[str]:
    found = {k for runs in groups.values() for run in runs.values()
             for k, v in (run.get("test") or {}).items() if isinstance(v, (int, float))}
    return [m for m in TEST_METRICS if m in found] + sorted(found - set(TEST_METRICS))


def summary_section(results: dict, run_dir: Path) -> tuple[str, list[dict]]:
    """Final test metrics (mean [95% CI] over seeds) and paired differences to eps = 0."""
    groups = group_runs(results)
    names = _test_metric_names(groups)
    rows, diff_rows = [], []
    for condition, runs in groups.items():
        label = condition_label(condition, groups)
        cells = [per_seed(runs, final_metric(name)) for name in names]
        rows.append([label, str(max(map(len, cells), default=0))]
                    + [estimate(list(c.values())).format() if c else "-" for c in cells])
        base = baseline_of(condition, groups)
        if base is not None:
            diffs = [paired_difference(c, per_seed(groups[base], final_metric(name)))
                     for c, name in zip(cells, names)]
            diff_rows.append([f"{label} - {condition_label(base, groups)}"]
                             + [d.format() if d else "-" for d in diffs])
    fragment = ("<h2>Final test metrics</h2><p>Mean over seeds and 95% Student-t interval "
                "[low, high]; with one seed the interval is unavailable. Test loss is the smoothed "
                "objective, whose floor rises with eps: compare NLL, accuracy and ECE across eps."
                "</p>"
                + table(["condition", "seeds"] + [f"test {n}" for n in names], rows))
    if diff_rows:
        fragment += ("<h3>Paired difference to eps=0</h3><p>Per seed, treatment minus baseline "
                     "(same initial weights and batch order), then mean and 95% interval.</p>"
                     + table(["difference"] + [f"test {n}" for n in names], diff_rows))
    verdicts = (claim_verdicts(CLAIM_TESTS["calibration"], groups)
                + claim_verdicts(CLAIM_TESTS["accuracy"], groups))
    return fragment, verdicts


def overfitting_section(results: dict, run_dir: Path) -> tuple[str, list[dict]]:
    """Best epoch (minimum val NLL) per condition, the rise after it, and claim 1's verdict."""
    groups = group_runs(results)
    rows = []
    for condition, runs in groups.items():
        found = {seed: best_epoch(run) for seed, run in runs.items() if best_epoch(run)}
        if not found:
            continue
        rises = {seed: f[2] - f[1] for seed, f in found.items()}
        base = baseline_of(condition, groups)
        difference = (paired_difference(rises, per_seed(groups[base], overfitting_rise))
                      if base is not None else None)
        rows.append([condition_label(condition, groups),
                     ", ".join(f"{f[0]}" for _, f in sorted(found.items())),
                     estimate([f[1] for f in found.values()]).format(),
                     estimate([f[2] for f in found.values()]).format(),
                     estimate(list(rises.values())).format(),
                     difference.format() if difference else "-"])
    fragment = ("<h2>Over-fitting: where validation NLL is lowest</h2>"
                "<p>The unsmoothed validation NLL is used, not the smoothed validation loss the "
                "blog experiment plotted: the smoothed loss has a floor that rises with eps (a "
                "perfect model still pays eps times the cross-entropy to the smoothing distribution), so its "
                "curves are not comparable across eps. A model over-fits when its validation NLL "
                "passes a minimum and rises; the rise is the final value minus the minimum.</p>"
                + table(["condition", "best epoch per seed", "min val NLL", "final val NLL",
                          "rise", "rise - baseline rise (paired)"], rows))
    return fragment, claim_verdicts(CLAIM_TESTS["overfitting"], groups)


def _curve(runs: dict[int, dict], metric: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """(epochs, mean, min, max) over seeds of one history metric."""
    by_epoch: dict[int, list[float]] = {}
    for run in runs.values():
        for row in run.get("history") or []:
            if row.get(metric) is not None:
                by_epoch.setdefault(int(row["epoch"]), []).append(float(row[metric]))
    epochs = sorted(by_epoch)
    return (epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs],
            [min(by_epoch[e]) for e in epochs], [max(by_epoch[e]) for e in epochs])


def plot_metric(metric: str, groups: dict):
    """A matplotlib figure: one line per condition (mean over seeds) with a min-max band over seeds."""
    from matplotlib.figure import Figure

    label, _ = HISTORY_METRICS.get(metric, (metric, "lower"))
    figure = Figure(figsize=(6.4, 4.0), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    for index, (condition, runs) in enumerate(groups.items()):
        epochs, mean, low, high = _curve(runs, metric)
        if not epochs:
            continue
        color = f"C{index % 10}"
        axes.plot(epochs, mean, color=color, linewidth=1.4,
                  label=f"{condition_label(condition, groups)} ({len(runs)} seeds)")
        if len(runs) > 1:
            axes.fill_between(epochs, low, high, color=color, alpha=0.2, linewidth=0)
        if metric == "val_nll":
            best = min(range(len(mean)), key=mean.__getitem__)
            axes.plot([epochs[best]], [mean[best]], "o", color=color, markersize=5)
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    axes.set_title(label, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return figure


def curves_section(results: dict, run_dir: Path) -> tuple[str, list[dict]]:
    """Per-epoch curves of every history metric, written as curves_<metric>.png and embedded."""
    groups = group_runs(results)
    present = {k for runs in groups.values() for run in runs.values()
               for row in run.get("history") or [] for k in row if k != "epoch"}
    metrics = [m for m in HISTORY_METRICS if m in present] + sorted(present - set(HISTORY_METRICS))
    figures = [embed_figure(plot_metric(metric, groups), Path(run_dir) / f"curves_{metric}.png",
                            f"{metric} per epoch") for metric in metrics]
    return ("<h2>Curves per epoch</h2><p>Mean over seeds; the band spans the minimum and maximum "
            "over seeds; dots on the NLL plot mark the lowest mean validation NLL. val_* metrics "
            "are on the evaluation split (by default the full official test set). The val_loss "
            "plot is the blog experiment's figure, corrected (a 10-class output layer, the full test "
            "set, several seeds); its floor rises with eps, so compare eps on val_nll.</p>"
            f'<div class="figures">{"".join(figures)}</div>'), []
