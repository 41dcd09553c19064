"""The overview sections of a sweep's report: final test metrics (and the accuracy claim),
over-fitting on the validation split (and its claim), and the per-epoch curves.

Sections follow :mod:`labelsmooth.lab.report.context` (``section(context) -> SectionOutput``);
verdicts come from the one rule (:func:`labelsmooth.lab.report.verdicts.judge`).

Over-fitting: a model over-fits when its validation NLL passes a minimum and rises. The *rise* is
the mean validation NLL over the last ``max(3, 10%)`` epochs minus the minimum (a mean, so one
spike of Adam's loss does not decide it). The claim is testable only where the eps = 0 baseline
over-fits: its mean validation NLL over seeds must be lowest before those last epochs, its rise
must be at least 1% of its minimum and, with several seeds, the rise's interval must exclude 0;
otherwise the verdict is "not applicable".
"""

from __future__ import annotations

import math
from pathlib import Path

from ..stats import BOUNDS, estimate, paired_difference
from .context import ReportContext, SectionOutput, final_metric, per_seed
from .html import embed_figure, figure_grid, table
from .verdicts import Claim, judge

__all__ = ["ACCURACY", "HISTORY_METRICS", "OVERFITTING", "best_epoch", "curves_section", "final_metrics_section",
           "overfitting_rise", "overfitting_section", "plot_metric", "tail_epochs"]

ACCURACY = Claim(
    "accuracy", "Smoothing improves accuracy",
    "Label smoothing improves accuracy: about 0.2 points of top-1 and top-5 error on ImageNet (1,000 classes, "
    "eps = 0.1).",
    "Szegedy et al. 2016, Rethinking the Inception Architecture for Computer Vision (Inception-v3)")
OVERFITTING = Claim(
    "overfitting", "Smoothing over-fits less",
    "Label smoothing over-fits less: the validation loss rises less after its minimum.",
    "a blog experiment: a small CNN with three convolutions trained for 200 epochs (SGD, learning rate 0.001, "
    "momentum 0.9, batch 32) on 6,000 Fashion-MNIST training images with eps in {0, 0.05, 0.1}, comparing "
    "the validation loss per epoch")
ACCURACY_MARGIN = 0.002  # 0.2 points: the ImageNet effect of Szegedy et al. 2016
RELATIVE_MARGIN = 0.1    # of the baseline's value, for the over-fitting rise
# the baseline over-fits when its rise is at least this fraction of its minimum validation NLL
OVERFIT_MIN_RELATIVE_RISE = 0.01

# history key -> axis label
HISTORY_METRICS: dict[str, str] = {
    "train_loss": "training loss (smoothed, mean over the epoch)",
    "val_loss": "validation loss, smoothed (its floor rises with eps)",
    "val_nll": "validation NLL (unsmoothed: comparable across eps)",
    "val_accuracy": "validation accuracy",
    "val_ece": "validation ECE (15 equal-width bins)",
}
# test-split keys shown first, in this order; any other numeric key follows
TEST_METRICS = ("accuracy", "nll", "ece", "loss")


# 1. Final test metrics and the accuracy claim ------------------------------------------------------


def _test_metric_names(context: ReportContext) -> list[str]:
    found = {k for runs in context.groups.values() for run in runs.values()
             for k, v in (run.get("test") or {}).items() if isinstance(v, (int, float))}
    return [m for m in TEST_METRICS if m in found] + sorted(found - set(TEST_METRICS))


def final_metrics_section(context: ReportContext) -> SectionOutput:
    """Final test metrics (mean [95% CI] over seeds), paired differences to eps = 0, the accuracy claim."""
    groups, names = context.groups, _test_metric_names(context)
    rows, diff_rows, verdicts = [], [], []
    for condition, runs in groups.items():
        cells = [per_seed(runs, final_metric(name)) for name in names]
        rows.append([context.label(condition), str(max(map(len, cells), default=0))]
                    + [estimate(list(c.values()), BOUNDS.get(n)).format() if c else "-" for c, n in zip(cells, names)])
    for condition, base in context.pairs():
        diffs = [paired_difference(per_seed(groups[condition], final_metric(n)),
                                   per_seed(groups[base], final_metric(n)), BOUNDS.get(n)) for n in names]
        diff_rows.append([f"{context.label(condition)} - {context.label(base)}"]
                         + [d.format() if d else "-" for d in diffs])
        treated, baseline = (per_seed(groups[c], final_metric("accuracy")) for c in (condition, base))
        if treated and baseline:
            verdicts.append(judge(ACCURACY, treated, baseline, section="final test metrics", split="test",
                                  contrast=context.contrast(condition, base), quantity="test accuracy",
                                  primary=context.is_primary(condition), better="higher", margin=ACCURACY_MARGIN,
                                  scope=context.scope, bounds="accuracy"))
    html = ("<p>The test split, read once after training: the model of the final epoch. Mean over seeds and "
            "95% Student-t interval [low, high], clipped to the metric's range; with one seed the interval is "
            "unavailable. Test loss is the smoothed objective, whose floor rises with eps: compare NLL, "
            "accuracy and ECE across eps. The accuracy claim's smallest effect that matters is 0.2 points, "
            "the ImageNet effect of Szegedy et al. 2016.</p>"
            + table(["condition", "seeds"] + [f"test {n}" for n in names], rows))
    if diff_rows:
        html += ("<h3>Paired difference to eps=0</h3><p>Per seed, treatment minus baseline (same initial "
                 "weights and batch order), then mean and 95% interval.</p>"
                 + table(["difference"] + [f"test {n}" for n in names], diff_rows))
    return SectionOutput("Final test metrics", html, verdicts)


# 2. Over-fitting ---------------------------------------------------------------------------------


def tail_epochs(epochs: int) -> int:
    """How many final epochs the rise averages: 10% of them, at least 3 (at most all).

    >>> tail_epochs(40), tail_epochs(200), tail_epochs(2)
    (4, 20, 2)
    """
    return min(epochs, max(3, math.ceil(0.1 * epochs)))


def _val_nll(run: dict) -> list[tuple[int, float]]:
    return [(int(h["epoch"]), float(h["val_nll"])) for h in run.get("history") or [] if h.get("val_nll") is not None]


def best_epoch(run: dict) -> tuple[int, float, float] | None:
    """(epoch of minimum val_nll, that minimum, mean val_nll over the last :func:`tail_epochs`
    epochs) of one run; None without history."""
    history = _val_nll(run)
    if not history:
        return None
    epoch, minimum = min(history, key=lambda h: h[1])
    tail = [value for _, value in history[-tail_epochs(len(history)):]]
    return epoch, minimum, sum(tail) / len(tail)


def overfitting_rise(run: dict) -> float | None:
    """Mean val_nll of the last :func:`tail_epochs` epochs minus its minimum (>= 0); None without history."""
    found = best_epoch(run)
    return None if found is None else found[2] - found[1]


def _baseline_does_not_overfit(context: ReportContext, baseline_runs: dict[int, dict]) -> str | None:
    if context.legacy:
        return context.legacy_reason
    found = [best_epoch(run) for run in baseline_runs.values()]
    found = [f for f in found if f is not None]
    epochs, mean, _, _ = _curve(baseline_runs, "val_nll")
    tail = tail_epochs(len(epochs))
    best = epochs[min(range(len(mean)), key=mean.__getitem__)]
    if best > epochs[-tail]:
        return (f"the eps=0 baseline has not over-fitted: its mean validation NLL is lowest at epoch {best} of "
                f"{epochs[-1]}, within the last {tail} epochs, so the claim cannot be tested on this run; the "
                f"overfitting preset trains a baseline that does over-fit")
    rise = estimate([f[2] - f[1] for f in found])
    relative = rise.mean / max(sum(f[1] for f in found) / len(found), 1e-12)
    if relative < OVERFIT_MIN_RELATIVE_RISE or (rise.has_interval and rise.low <= 0):
        return (f"the eps=0 baseline does not over-fit here (its validation NLL rises {rise.format()} after its "
                f"minimum, {100 * relative:.1f}% of the minimum; at least 1% and an interval above 0 are needed), "
                f"so the claim cannot be tested on this run; the overfitting preset trains a baseline that does")
    return None


def overfitting_section(context: ReportContext) -> SectionOutput:
    """Best epoch on validation per condition, the rise after it, and the over-fitting claim's verdicts."""
    groups = context.groups
    rows, verdicts = [], []
    epochs = max((len(_val_nll(run)) for runs in groups.values() for run in runs.values()), default=0)
    for condition, runs in groups.items():
        found = {seed: best_epoch(run) for seed, run in runs.items() if best_epoch(run)}
        if found:
            rows.append([context.label(condition), ", ".join(str(f[0]) for _, f in sorted(found.items())),
                         estimate([f[1] for f in found.values()], BOUNDS["nll"]).format(),
                         estimate([f[2] for f in found.values()], BOUNDS["nll"]).format(),
                         estimate([f[2] - f[1] for f in found.values()], (0.0, None)).format()])
    for condition, base in context.pairs():
        treated, baseline = per_seed(groups[condition], overfitting_rise), per_seed(groups[base], overfitting_rise)
        if treated and baseline:
            margin = RELATIVE_MARGIN * sum(baseline.values()) / len(baseline)
            verdicts.append(judge(
                OVERFITTING, treated, baseline, section="over-fitting", split="validation",
                contrast=context.contrast(condition, base),
                quantity=f"rise of validation NLL after its minimum (mean of the last {tail_epochs(epochs)} epochs)",
                primary=context.is_primary(condition), better="lower", margin=max(margin, 0.0), scope=context.scope,
                not_applicable=_baseline_does_not_overfit(context, groups[base])))
    html = (f"<p>Per-epoch metrics come from {context.validation_name}. The unsmoothed validation NLL is used, "
            "not the smoothed validation loss the blog experiment plotted: the smoothed loss has a floor that "
            "rises with eps (a perfect model still pays eps times the cross-entropy to the smoothing "
            "distribution), so its curves are not comparable across eps. A model over-fits when its validation "
            f"NLL passes a minimum and rises; the rise is the mean over the last {tail_epochs(epochs)} epochs "
            "(10% of them, at least 3) minus the minimum. The smallest effect that matters is 10% of the "
            "baseline's rise. The epoch of the minimum is the early-stopping epoch, chosen on validation.</p>"
            + table(["condition", "best epoch per seed", "min validation NLL",
                     f"mean validation NLL, last {tail_epochs(epochs)} epochs", "rise"], rows))
    return SectionOutput("Over-fitting", html, verdicts)


# 3. Curves ---------------------------------------------------------------------------------------


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


def plot_metric(metric: str, context: ReportContext):
    """A matplotlib figure: one line per condition (mean over seeds) with a min-max band over seeds."""
    from matplotlib.figure import Figure

    label = HISTORY_METRICS.get(metric, metric)
    if context.legacy:
        label = label.replace("validation", "test split,")
    figure = Figure(figsize=(5.6, 3.6), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    for index, (condition, runs) in enumerate(context.groups.items()):
        epochs, mean, low, high = _curve(runs, metric)
        if not epochs:
            continue
        color = f"C{index % 10}"
        axes.plot(epochs, mean, color=color, linewidth=1.4,
                  label=f"{context.label(condition)} ({len(runs)} seeds)")
        if len(runs) > 1:
            axes.fill_between(epochs, low, high, color=color, alpha=0.2, linewidth=0)
        if metric == "val_nll":
            best = min(range(len(mean)), key=mean.__getitem__)
            axes.plot([epochs[best]], [mean[best]], "o", color=color, markersize=5)
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    axes.set_title(label, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return figure


def curves_section(context: ReportContext) -> SectionOutput:
    """Per-epoch curves of every history metric, written as curves_<metric>.png and embedded."""
    present = {k for runs in context.groups.values() for run in runs.values()
               for row in run.get("history") or [] for k in row if k != "epoch"}
    metrics = [m for m in HISTORY_METRICS if m in present] + sorted(present - set(HISTORY_METRICS))
    figures = [embed_figure(plot_metric(metric, context), Path(context.run_dir) / f"curves_{metric}.png",
                            f"{metric} per epoch") for metric in metrics]
    html = (f"<p>Mean over seeds; the band spans the minimum and maximum over seeds; dots on the NLL plot mark "
            f"the lowest mean validation NLL. The val_* metrics are on {context.validation_name}; the test split "
            "is not evaluated per epoch. The val_loss plot is the blog experiment's figure, corrected (a 10-class "
            "output layer, several seeds, a validation split instead of the test set); its floor rises with eps, "
            "so compare eps on val_nll.</p>" + figure_grid(figures))
    return SectionOutput("Curves per epoch", html)
