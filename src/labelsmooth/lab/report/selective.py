"""The selective-classification section of a sweep's report: does smoothing make the model worse at
knowing when it is wrong?

Zhu et al. 2023 and Xia et al. 2024 report that label smoothing degrades misclassification
detection with the max-softmax probability, and so selective classification (abstaining on the
least confident inputs). Per cell, on the test split, as trained and after temperature scaling
(T fitted on the validation split): AURC, E-AURC, the AUROC of the max probability for telling
right from wrong, and the risk at 80% coverage (:mod:`labelsmooth.calibration.selective`).
The claim predicts a *deterioration*; its primary quantity is the AUROC as trained (smallest
effect that matters: 0.01), the others are secondary (10% of the eps = 0 value). A
risk-coverage figure shows the lowest seed of each condition.
"""

from __future__ import annotations

from pathlib import Path

from ...calibration.selective import SELECTIVE_METRICS, risk_coverage_curve, selective_summary
from ..stats import BOUNDS, estimate
from .context import CellLogits, ReportContext, SectionOutput
from .html import embed_figure, figure_grid, table
from .verdicts import Claim, judge

__all__ = ["SELECTIVE", "section"]

SELECTIVE = Claim(
    "selective", "Smoothing degrades misclassification detection",
    "Label smoothing makes the max-softmax probability worse at telling right predictions from wrong ones, "
    "and so degrades selective classification.",
    "Zhu et al. 2023, Rethinking Confidence Calibration for Failure Prediction; Xia et al. 2024, Understanding "
    "Why Label Smoothing Degrades Selective Classification and How to Fix It", predicts="deterioration")
AUROC_MARGIN = 0.01
RELATIVE_MARGIN = 0.1
VARIANTS = ("as trained", "temperature-scaled")


def _scores(cell: CellLogits) -> dict[str, dict[str, float | None]]:
    logits, target = cell.test
    found = {"as trained": selective_summary(logits, target, from_logits=True)}
    if cell.temperature is not None:
        found["temperature-scaled"] = selective_summary(logits / cell.temperature, target, from_logits=True)
    return found


def _values(by_seed: dict, variant: str, metric: str) -> dict[int, float]:
    return {seed: v[variant][metric] for seed, v in by_seed.items()
            if variant in v and v[variant][metric] is not None}


def _figure(context: ReportContext) -> str:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.6, 3.6), layout="constrained")
    axes = figure.add_subplot()
    for index, (condition, runs) in enumerate(context.groups.items()):
        seed = min(runs)
        cell = context.cell(runs[seed])
        if cell is not None:
            coverage, risk = risk_coverage_curve(*cell.test, from_logits=True)
            shown = coverage >= 0.05  # below, a handful of images make the risk jump
            axes.plot(coverage[shown].numpy(), risk[shown].numpy(), color=f"C{index % 10}", linewidth=1.3,
                      label=f"{context.label(condition)}, seed {seed}")
    axes.set_xlabel("coverage (fraction of test images kept, most confident first)")
    axes.set_ylabel("risk (error rate among those kept)")
    axes.set_title("Risk-coverage curves, test split, as trained", fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return embed_figure(figure, Path(context.run_dir) / "selective_risk_coverage.png",
                        "Risk-coverage curves from 5% coverage on (lower is better)")


def section(context: ReportContext) -> SectionOutput:
    """The table of selective-classification metrics, the risk-coverage figure and the verdicts."""
    title = "Selective classification: does the model know when it is wrong?"
    scores = {}
    for condition, runs in context.groups.items():
        by_seed = {seed: _scores(cell) for seed, run in runs.items() if (cell := context.cell(run)) is not None}
        if by_seed:
            scores[condition] = by_seed
    if not scores:
        return SectionOutput(title, "<p>No finished cell has a final.npz yet: nothing to score.</p>")
    rows = []
    for condition, by_seed in scores.items():
        for variant in VARIANTS:
            cells = [_values(by_seed, variant, metric) for metric in SELECTIVE_METRICS]
            if any(cells):
                rows.append([context.label(condition), str(len(by_seed)), variant]
                            + [estimate(list(c.values()), BOUNDS.get(m)).format() if c else "-"
                               for c, m in zip(cells, SELECTIVE_METRICS)])
    verdicts = []
    for condition, base in context.pairs():
        if condition not in scores or base not in scores:
            continue
        for variant in VARIANTS:
            for metric, (name, better) in SELECTIVE_METRICS.items():
                treated, baseline = (_values(scores[c], variant, metric) for c in (condition, base))
                if not treated or not baseline:
                    continue
                margin = AUROC_MARGIN if metric == "auroc" else RELATIVE_MARGIN * sum(baseline.values()) / len(baseline)
                verdicts.append(judge(
                    SELECTIVE, treated, baseline, section="selective classification", split="test",
                    contrast=context.contrast(condition, base), quantity=f"test {name}, {variant}",
                    primary=context.is_primary(condition) and metric == "auroc" and variant == "as trained",
                    better=better, margin=margin, scope=context.scope, bounds=metric))
    header = ["condition", "seeds", "model"] + [f"test {name} ({better} is better)"
                                                for name, better in SELECTIVE_METRICS.values()]
    html = ("<p>A model that may abstain keeps its most confident predictions, by the max softmax probability. "
            "AURC is the area under the risk-coverage curve; E-AURC subtracts the AURC that a perfect ranking of "
            "the same predictions would have, which removes the effect of accuracy itself; the AUROC is the "
            "probability that a right prediction is more confident than a wrong one; the risk at 80% coverage is "
            "the error rate among the 80% most confident test images. Temperature scaling uses T fitted on the "
            "validation split. The claim predicts that smoothing makes these worse; its primary quantity is the "
            "AUROC as trained (smallest effect that matters: 0.01).</p>"
            + table(header, rows) + figure_grid([_figure(context)]))
    return SectionOutput(title, html, verdicts)

