"""The decisive comparisons of a sweep's report: is label smoothing better than the simpler fixes?

For every eps > 0 model, on the test split, paired by seed, against

(a) the eps = 0 model after temperature scaling (Guo et al. 2017; T fitted on the validation split),
(b) the eps = 0 model early-stopped: its weights of the epoch with the lowest validation NLL,
(c) and, both temperature-scaled, the eps = 0 model again (does smoothing still help once both
    are scaled?),

on test NLL (the primary quantity: a proper scoring rule, what both fixes optimise), ECE (15
equal-width bins) and, for (b), accuracy (temperature scaling does not change the predicted
class). Verdicts by the one rule (:func:`labelsmooth.lab.report.verdicts.judge`); smallest
effects that matter: 1% of the reference's NLL, 10% of its ECE, 0.2 accuracy points. Nothing is
chosen on the test set: the temperature and the early-stopping epoch come from the validation
split. Runs recorded before the lab kept the early-stopped weights get "not applicable" for (b).
"""

from __future__ import annotations

from ..stats import estimate
from .context import CellLogits, Condition, ReportContext, SectionOutput, prediction_metrics
from .html import escape, table
from .verdicts import Claim, judge, unavailable

__all__ = ["BEATS_EARLY_STOPPING", "BEATS_TEMPERATURE_SCALING", "HELPS_AFTER_SCALING", "section"]

BEATS_TEMPERATURE_SCALING = Claim(
    "beats-temperature-scaling", "Smoothing beats temperature scaling",
    "Training with label smoothing gives better test predictions (lower NLL and ECE) than temperature scaling of "
    "the unsmoothed model, fitted on validation data.",
    "Müller, Kornblith & Hinton 2019, Table 3, found the two close; temperature scaling: Guo et al. 2017, "
    "On Calibration of Modern Neural Networks")
BEATS_EARLY_STOPPING = Claim(
    "beats-early-stopping", "Smoothing beats early stopping",
    "Training with label smoothing for the whole schedule gives better test predictions than the unsmoothed "
    "model stopped at its epoch of lowest validation NLL.",
    "the alternative to the over-fitting claim of a blog experiment on Fashion-MNIST, whose own curves show "
    "where the unsmoothed model should have stopped")
HELPS_AFTER_SCALING = Claim(
    "helps-after-temperature-scaling", "Smoothing helps after temperature scaling",
    "Label smoothing still lowers test NLL and ECE once both models are temperature-scaled.",
    "Müller, Kornblith & Hinton 2019, When does label smoothing help? (Table 3, both columns)")

# quantity -> (label, better, margin from the reference's mean, bounds name)
QUANTITIES = {
    "nll": ("test NLL", "lower", lambda reference: 0.01 * reference, "nll"),
    "ece": ("test ECE", "lower", lambda reference: 0.1 * reference, "ece"),
    "accuracy": ("test accuracy", "higher", lambda reference: 0.002, "accuracy"),
}
# comparison -> (claim, what the smoothed model is, what it is compared with, quantities)
COMPARISONS = {
    "temperature": (BEATS_TEMPERATURE_SCALING, "as trained", "temperature-scaled", ("nll", "ece")),
    "early": (BEATS_EARLY_STOPPING, "as trained", "early-stopped", ("nll", "ece", "accuracy")),
    "both scaled": (HELPS_AFTER_SCALING, "temperature-scaled", "temperature-scaled", ("nll", "ece")),
}


def _variants(cell: CellLogits) -> dict[str, dict[str, float]]:
    """variant ("as trained", "temperature-scaled", "early-stopped") -> test metrics of one cell."""
    logits, target = cell.test
    found = {"as trained": prediction_metrics(logits, target)}
    if cell.temperature is not None:
        found["temperature-scaled"] = prediction_metrics(logits / cell.temperature, target)
    if cell.early_test is not None:
        found["early-stopped"] = prediction_metrics(cell.early_test, target)
    return found


def _by_seed(context: ReportContext, condition: Condition) -> dict[int, dict[str, dict[str, float]]]:
    found = {}
    for seed, run in context.groups[condition].items():
        cell = context.cell(run)
        if cell is not None:
            found[seed] = _variants(cell)
    return found


def _values(by_seed: dict, variant: str, quantity: str) -> dict[int, float]:
    return {seed: v[variant][quantity] for seed, v in by_seed.items() if variant in v}


def _missing_reason(context: ReportContext, variant: str) -> str:
    if variant == "early-stopped":
        return ("the eps=0 model's early-stopped weights were not recorded (" + context.legacy_reason + ")"
                if context.legacy else "the eps=0 cells have no early-stopped weights recorded")
    return "the eps=0 cells have no validation split to fit a temperature on"


def _early_epochs(context: ReportContext, base: Condition) -> str:
    epochs = [str(run["early_stopped"]["epoch"]) for _, run in sorted(context.groups[base].items())
              if run.get("early_stopped")]
    return ", ".join(epochs) if epochs else "not recorded"


def section(context: ReportContext) -> SectionOutput:
    """The comparisons (a)-(c) of the module docstring: a table and their verdicts."""
    title = "Decisive comparisons: does smoothing beat the simpler fixes?"
    rows, verdicts, notes = [], [], []
    for condition, base in context.pairs():
        treated, reference = _by_seed(context, condition), _by_seed(context, base)
        if not treated or not reference:
            continue
        note = (f"{context.label(base)} early-stopped at epoch(s) {_early_epochs(context, base)} "
                "(per seed, chosen on validation)")
        if note not in notes:
            notes.append(note)
        for claim, own, other, quantities in COMPARISONS.values():
            cells = [f"{context.label(condition)} {own} vs {context.label(base)} {other}"]
            for quantity in QUANTITIES:
                label, better, margin_of, bounds = QUANTITIES[quantity]
                mine, theirs = _values(treated, own, quantity), _values(reference, other, quantity)
                if not mine or not theirs:
                    cells.append("-")
                    continue
                mean_theirs = estimate(list(theirs.values())).mean
                record = judge(claim, mine, theirs, section="decisive comparisons", split="test",
                               contrast=f"{context.label(condition)} {own} vs {context.label(base)} {other}",
                               quantity=label, primary=context.is_primary(condition) and quantity == "nll",
                               better=better, margin=margin_of(mean_theirs), scope=context.scope, bounds=bounds)
                cells.append(f"{mean_theirs:.4f} -> {record['treated_mean']:.4f}; "
                             + (f"{record['mean']:+.4f} [{record['low']:+.4f}, {record['high']:+.4f}]"
                                if record["low"] is not None else f"{record['mean']:+.4f} (1 seed)"))
                if quantity in quantities:
                    verdicts.append(record)
            rows.append(cells)
        for variant in ("temperature-scaled", "early-stopped"):
            if not _values(reference, variant, "nll"):
                claim = BEATS_TEMPERATURE_SCALING if variant == "temperature-scaled" else BEATS_EARLY_STOPPING
                verdicts.append(unavailable(
                    claim, section="decisive comparisons", split="test",
                    contrast=f"{context.label(condition)} as trained vs {context.label(base)} {variant}",
                    quantity="test NLL", primary=context.is_primary(condition), better="lower", margin=0.0,
                    scope=context.scope, n_seeds=len(set(treated) & set(reference)),
                    reason=_missing_reason(context, variant)))
    if not rows:
        return SectionOutput(title, "<p>No eps&gt;0 and eps=0 pair with final.npz files: nothing to compare.</p>")
    html = ("<p>Is training with label smoothing better than fixing the unsmoothed model with one of the simpler "
            "tools? On the test split, paired by seed, each eps&gt;0 model is compared with the eps=0 model after "
            "temperature scaling (T fitted on the validation split), with the eps=0 model early-stopped at its "
            "epoch of lowest validation NLL, and, both temperature-scaled, with the eps=0 model again. Each cell: "
            "reference -&gt; smoothing (means over seeds); paired difference smoothing - reference [95% CI]. "
            "Test NLL is the primary quantity; the smallest effects that matter are 1% of the reference's NLL, "
            "10% of its ECE and 0.2 accuracy points. " + escape("; ".join(notes)) + ".</p>"
            + table(["comparison", "test NLL", "test ECE", "test accuracy"], rows))
    return SectionOutput(title, html, verdicts)
