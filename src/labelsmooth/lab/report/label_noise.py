"""The label-noise section of a sweep's report: does label smoothing mitigate noisy training labels
(Lukasik et al. 2020), and is *negative* smoothing the better choice when the noise is high (Wei et
al. 2022)?

A sweep with ``--label-noise`` trains every eps at every noise rate ``r`` (a seeded fraction ``r``
of the training labels flipped, one draw per seed, recorded in ``label_noise.npz``; validation and
test labels clean; see :mod:`labelsmooth.lab.noise`). ``section(context)`` gives, per noise rate and
eps, the clean test accuracy and NLL of the final weights and of the early-stopped ones (the epoch
of lowest *clean* validation NLL), and how many of the flipped training labels each model fits;
a figure of those against the noise rate, one line per eps with its 95% band over seeds; and the
verdicts, by the one rule (:func:`labelsmooth.lab.report.verdicts.judge`), per noise rate:

- Lukasik et al.: each eps > 0 against eps = 0 at every rate ``r > 0``, on clean test accuracy
  (smallest effect that matters: 0.5 points) and test NLL (1% of the eps = 0 value); primary: the
  largest eps, on accuracy, at the highest rate;
- Wei et al.: the most negative eps against the largest positive one at every rate ``r > 0`` (and
  against eps = 0), on clean test accuracy; primary: the highest rate.

Verdicts use the final weights (nothing chosen); the early-stopped ones (chosen on the clean
validation split, never the test set) are shown beside them.

Runs without label noise get no such section (``section`` returns None).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..rundir import LABEL_NOISE_FILE, cell_file
from ..stats import BOUNDS, estimate
from .context import Condition, ReportContext, SectionOutput
from .html import embed_figure, escape, figure_grid, table
from .verdicts import Claim, judge

__all__ = ["MITIGATES_NOISE", "NEGATIVE_SMOOTHING", "memorised", "section"]

MITIGATES_NOISE = Claim(
    "label-noise", "Smoothing mitigates label noise",
    "When a fraction of the training labels is wrong, a model trained with label smoothing (eps > 0) is more "
    "accurate on clean test data, and assigns the true class a higher probability, than one trained without it.",
    "Lukasik, Bhojanapalli, Menon & Kumar 2020, Does label smoothing mitigate label noise? (ICML)")
NEGATIVE_SMOOTHING = Claim(
    "negative-smoothing", "Negative smoothing is better at high noise",
    "When many training labels are wrong, negative label smoothing (eps < 0) gives a model more accurate on clean "
    "test data than positive smoothing does (at low noise rates they find positive smoothing the better one).",
    "Wei, Liu, Liu, Zhu & Liu 2022, To Smooth or Not? When Label Smoothing Meets Noisy Labels (ICML)")
ACCURACY_MARGIN = 0.005   # half a point of clean test accuracy
NLL_RELATIVE_MARGIN = 0.01
# variant -> (what it is, the run's record of its test metrics)
VARIANTS = {"as trained": lambda run: run.get("test"),
            "early-stopped": lambda run: (run.get("early_stopped") or {}).get("test")}


def _values(runs: dict[int, dict], variant: str, metric: str) -> dict[int, float]:
    found = {seed: (VARIANTS[variant](run) or {}).get(metric) for seed, run in runs.items()}
    return {seed: float(v) for seed, v in found.items() if v is not None}


def memorised(run_dir: Path, run: dict) -> float | None:
    """Fraction of the cell's flipped training labels that its final weights predict (they fitted
    the noise), from ``label_noise.npz`` and the cell's training logits; None without them."""
    rate, seed = float(run.get("label_noise") or 0.0), run.get("seed")
    path, cell = Path(run_dir) / LABEL_NOISE_FILE, cell_file(run_dir, run, "final.npz")
    if not rate or cell is None or not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as draws, np.load(cell, allow_pickle=False) as arrays:
        key = f"noise{rate:g}_seed{seed}"
        if f"flipped_{key}" not in draws.files or "train_logits" not in arrays.files:
            return None
        flipped, labels = draws[f"flipped_{key}"], draws[f"labels_{key}"]
        predicted = arrays["train_logits"][flipped].argmax(1)
    return float((predicted == labels).mean()) if len(flipped) else None


def _arms(context: ReportContext) -> list[tuple[str, str, dict[tuple[float, float], Condition]]]:
    """(model, distribution, {(noise rate, eps): condition}) per arm of the grid that has label noise."""
    arms: dict[tuple[str, str], dict] = {}
    for condition in context.groups:
        arms.setdefault((condition.model, condition.distribution), {})[
            condition.label_noise, condition.label_smoothing] = condition
    return [(m, d, grid) for (m, d), grid in arms.items() if any(rate > 0 for rate, _ in grid)]


def _is_primary_arm(context: ReportContext, model: str, distribution: str) -> bool:
    primary = context.primary_condition
    if primary is None:
        first = next(iter(context.groups))
        return (model, distribution) == (first.model, first.distribution)
    return (model, distribution) == (primary.model, primary.distribution)


def _verdicts(context: ReportContext, grid: dict, primary_arm: bool) -> list[dict]:
    rates = sorted({rate for rate, _ in grid})
    eps_values = sorted({eps for _, eps in grid})
    positive = [e for e in eps_values if e > 0]
    negative = [e for e in eps_values if e < 0]
    verdicts = []

    def compare(claim: Claim, rate: float, treated: float, base: float, metric: str, primary: bool) -> None:
        t, b = grid.get((rate, treated)), grid.get((rate, base))
        if t is None or b is None:
            return
        mine = _values(context.groups[t], "as trained", metric)
        theirs = _values(context.groups[b], "as trained", metric)
        if not mine or not theirs:
            return
        accuracy = metric == "accuracy"
        margin = ACCURACY_MARGIN if accuracy else NLL_RELATIVE_MARGIN * estimate(list(theirs.values())).mean
        verdicts.append(judge(claim, mine, theirs, section="label noise", split="test",
                              contrast=f"eps={treated:g} vs eps={base:g} at noise rate {rate:g}",
                              quantity=f"clean test {'accuracy' if accuracy else 'NLL'}", primary=primary,
                              better="higher" if accuracy else "lower", margin=margin, scope=context.scope,
                              bounds=metric))

    for rate in (r for r in rates if r > 0):
        for eps in positive:
            for metric in ("accuracy", "nll"):
                compare(MITIGATES_NOISE, rate, eps, 0.0, metric,
                        primary_arm and rate == rates[-1] and eps == positive[-1] and metric == "accuracy")
    if negative:
        for rate in (r for r in rates if r > 0):
            if positive:
                compare(NEGATIVE_SMOOTHING, rate, negative[0], positive[-1], "accuracy",
                        primary_arm and rate == rates[-1])
            compare(NEGATIVE_SMOOTHING, rate, negative[0], 0.0, "accuracy", False)
    return verdicts


def _rows(context: ReportContext, grid: dict) -> list[list[str]]:
    rows = []
    for (rate, eps), condition in sorted(grid.items()):
        runs = context.groups[condition]
        cells = [f"{rate:g}", f"{eps:g}", str(len(runs))]
        for variant in VARIANTS:
            for metric in ("accuracy", "nll"):
                values = list(_values(runs, variant, metric).values())
                cells.append(estimate(values, BOUNDS[metric]).format() if values else "-")
        fitted = [v for run in runs.values() if (v := memorised(context.run_dir, run)) is not None]
        cells.append(estimate(fitted, BOUNDS["accuracy"]).format(3) if fitted else "-")
        rows.append(cells)
    return rows


def _runaway(context: ReportContext, grid: dict) -> str:
    """A warning naming the eps < 0 cells whose training loss fell below 0 (empty when none did).

    With eps < 0 the non-target classes get negative weight, so the smoothed loss is unbounded
    below: a model that fits its training labels lowers it without limit by pushing its logits apart.
    """
    found = []
    for (rate, eps), condition in sorted(grid.items()):
        losses = [run["history"][-1]["train_loss"] for run in context.groups[condition].values()
                  if eps < 0 and run.get("history")]
        if losses and min(losses) < 0:
            found.append(f"eps={eps:g} at noise rate {rate:g} (down to {min(losses):.3g})")
    if not found:
        return ""
    return ("<p><strong>Run-away loss.</strong> With eps &lt; 0 the smoothed loss is unbounded below (the "
            "other classes get negative weight): once a model fits its training labels it lowers the loss "
            "without limit by pushing its logits apart, and its clean test accuracy and NLL degrade. The last "
            f"training loss fell below 0 for {escape('; '.join(found))}, so those numbers measure that run-away, "
            "not negative smoothing at its best.</p>")


def _figure(context: ReportContext, grid: dict, path: Path, title: str) -> str:
    """Clean test accuracy and NLL against the noise rate, one line per eps with its 95% band;
    the final weights (top) and the early-stopped ones (bottom)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9.6, 6.4), layout="constrained")
    axes = figure.subplots(2, 2, sharex=True)
    rates = sorted({rate for rate, _ in grid})
    for row, variant in enumerate(VARIANTS):
        for column, metric in enumerate(("accuracy", "nll")):
            ax = axes[row][column]
            for index, eps in enumerate(sorted({eps for _, eps in grid})):
                points = [(rate, estimate(list(v.values()), BOUNDS[metric])) for rate in rates
                          if (rate, eps) in grid and (v := _values(context.groups[grid[rate, eps]], variant, metric))]
                if not points:
                    continue
                x = [p[0] for p in points]
                ax.plot(x, [p[1].mean for p in points], marker="o", color=f"C{index}", label=f"eps={eps:g}")
                if all(p[1].has_interval for p in points):
                    ax.fill_between(x, [p[1].low for p in points], [p[1].high for p in points], color=f"C{index}",
                                    alpha=0.2, linewidth=0)
            ax.set_ylabel(f"clean test {'accuracy' if metric == 'accuracy' else 'NLL'}")
            ax.set_title(f"{variant} weights", fontsize=9)
            ax.grid(alpha=0.3)
            if metric == "nll":
                ax.set_yscale("log")
            if row == 1:
                ax.set_xlabel("fraction of training labels flipped")
    axes[0][0].legend(fontsize=8)
    return embed_figure(figure, path, f"{title}: clean test accuracy and NLL against the label-noise rate, mean "
                                      f"over seeds with 95% bands", wide=True)


def section(context: ReportContext) -> SectionOutput | None:
    """The label-noise section of a sweep with label noise (None for a sweep without)."""
    arms = _arms(context)
    if not arms:
        return None
    config = context.config
    kind = config.get("noise_kind", "symmetric")
    how = ("each flipped label moved to a uniformly chosen other class" if kind == "symmetric" else
           "each flipped label moved to its class's confusable partner (for Fashion-MNIST: T-shirt/top and "
           "Shirt, Pullover and Coat, Sneaker and Ankle boot)")
    html = [
        f"<p>At noise rate r, a seeded fraction r of the training labels was flipped ({escape(kind)} noise: "
        f"{escape(how)}); the validation and test labels are clean, so every metric here is measured against "
        "the true classes. One draw per seed, nested across rates (the labels flipped at a lower rate are among "
        f"those flipped at a higher one); every eps of a seed trains on the same labels, so the comparisons are "
        f"paired. The flipped indices are in {LABEL_NOISE_FILE}. 'Early-stopped' weights are those of the epoch "
        "of lowest validation NLL (clean validation labels: an optimistic choice a practitioner with noisy "
        "validation labels may not have). 'Flipped labels fitted': the fraction of the flipped training "
        "images whose wrong label the final model predicts (memorised noise). Mean [95% interval] over seeds. "
        "Verdicts: smoothing (each eps &gt; 0) against eps=0 at each noise rate (Lukasik et al. 2020; smallest "
        "effect that matters 0.5 points of accuracy, 1% of the eps=0 NLL), and the negative eps against the "
        "largest positive eps and against eps=0 at each noise rate r &gt; 0 (Wei et al. 2022, accuracy), all on the "
        "final weights. Primary: the highest noise rate. Lukasik et al. also find smoothing close to loss "
        "correction for the noise; this run does not train loss correction, so that part is not tested.</p>"]
    verdicts = []
    for model, distribution, grid in arms:
        title = f"{model}, {distribution} smoothing" if len(arms) > 1 else model
        html.append(f"<h3>{escape(title)}</h3>")
        path = Path(context.run_dir) / f"label_noise_{model}_{distribution}.png"
        html.append(figure_grid([_figure(context, grid, path, title)]))
        html.append(table(["noise rate", "eps", "seeds", "test accuracy", "test NLL", "early-stopped accuracy",
                           "early-stopped NLL", "flipped labels fitted"], _rows(context, grid)))
        html.append(_runaway(context, grid))
        verdicts += _verdicts(context, grid, _is_primary_arm(context, model, distribution))
    return SectionOutput("Label noise: does smoothing help, and does negative smoothing?", "".join(html), verdicts)
