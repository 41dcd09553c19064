"""The calibration section of a lab report: per-cell metrics before and after temperature scaling,
reliability diagrams, and the calibration claim.

``cell_calibration(final_npz)`` scores one finished cell (``cells/<key>/final.npz``): on the test
split, the metrics of ``bootstrap.SUMMARY_METRICS`` (accuracy, ECE, MCE, class-wise ECE, Brier,
NLL, the signed confidence gap = mean confidence - accuracy), each with a percentile-bootstrap
interval over test rows; the temperature fitted on the validation (hold-out) split; and the same
metrics after scaling. The result is plain JSON, so a sweep could store it as ``run["calibration"]``.

``section(context)`` (one of the sweep report's sections) builds a table in the shape of
Müller et al. 2019, Table 3 (each condition at T = 1 and after temperature scaling with its T),
reliability diagrams per condition before and after scaling (``calibration_reliability*.png``),
a line per condition saying whether it is over- or under-confident, and the verdicts of the
calibration claim: test ECE of eps > 0 against eps = 0, both as trained, by the one rule
(:func:`labelsmooth.lab.report.verdicts.judge`; smallest effect that matters: 10% of the
baseline's ECE). Precondition: the eps = 0 model is over-confident on the validation split (its
mean confidence exceeds its accuracy, the interval over seeds above 0); a model that is not
over-confident has nothing for smoothing to fix, so the verdict is "not applicable". Whether
smoothing beats temperature scaling is the decisive comparisons' section
(:mod:`labelsmooth.lab.report.decisive`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import Tensor

from ...calibration.bootstrap import SUMMARY_METRICS, calibration_summary
from ...calibration.diagrams import reliability_diagrams
from ...calibration.metrics import check_inputs, confidence_gap
from ...calibration.scaling import TemperatureScaling
from ..rundir import cell_file
from ..stats import BOUNDS, estimate
from .context import ReportContext, SectionOutput
from .html import embed_figure, escape, figure_grid, table
from .verdicts import Claim, judge

__all__ = ["CALIBRATION", "cell_calibration", "section"]

SPLIT_ARRAYS = {"test": ("test_logits", "test_target"), "holdout": ("holdout_logits", "holdout_target")}


def _load_split(arrays: Mapping[str, np.ndarray], split: str, source: str,
                num_classes: int | None = None) -> tuple[Tensor, Tensor] | None:
    """Checked (logits, target) of one split; None for a missing or empty holdout split."""
    logits_key, target_key = SPLIT_ARRAYS[split]
    if logits_key not in arrays or target_key not in arrays:
        if split == "holdout":
            return None
        raise ValueError(f"final_npz: expected arrays {logits_key!r} and {target_key!r} in {source}, "
                         f"got {sorted(arrays)}")
    logits = np.asarray(arrays[logits_key])
    if split == "holdout" and logits.shape[:1] == (0,):
        return None
    if num_classes is not None and logits.shape[1:] != (num_classes,):
        raise ValueError(f"final_npz: {logits_key} must have shape (N, {num_classes}) like the test "
                         f"logits, got shape {logits.shape} in {source}")
    try:
        return check_inputs(logits, np.asarray(arrays[target_key]), from_logits=True)
    except ValueError as error:
        raise ValueError(f"final_npz: {logits_key} / {target_key} in {source}: {error}") from error


def _read_arrays(final_npz: str | Path | Mapping[str, np.ndarray]) -> tuple[dict, str]:
    if isinstance(final_npz, Mapping):
        return dict(final_npz), "the arrays given"
    path = Path(final_npz)
    if not path.is_file():
        raise ValueError(f"final_npz: expected a cell's final.npz file, got {path} (no such file)")
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}, str(path)


def _scored(logits: Tensor, target: Tensor, n_resamples: int, confidence: float, seed: int) -> dict:
    summary = calibration_summary(logits, target, n_resamples=n_resamples, confidence=confidence,
                                  seed=seed, from_logits=True)
    return {name: interval._asdict() for name, interval in summary.items()}


def cell_calibration(final_npz: str | Path | Mapping[str, np.ndarray], *, n_resamples: int = 200,
                     confidence: float = 0.95, seed: int = 0) -> dict:
    """Calibration of one finished cell, before and after temperature scaling (plain JSON).

    ``final_npz``: a path to a cell's ``final.npz`` or a mapping with its arrays
    (``test_logits`` (N, K), ``test_target`` (N,), optionally ``holdout_logits`` /
    ``holdout_target`` to fit the temperature on). Returns::

        {"n_test": N, "n_holdout": M, "temperature": T or None,
         "raw": {metric: {"estimate", "low", "high"}}, "scaled": {...} or None}

    with the metrics of ``SUMMARY_METRICS`` and their bootstrap intervals (``n_resamples`` resamples
    of the test rows, the same resamples for every metric).

    >>> g = torch.Generator().manual_seed(0)
    >>> z = torch.randn(600, 4, generator=g) * 3
    >>> y = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
    >>> arrays = {"test_logits": z[:300] * 2, "test_target": y[:300],
    ...           "holdout_logits": z[300:] * 2, "holdout_target": y[300:]}
    >>> result = cell_calibration(arrays, n_resamples=20)
    >>> result["temperature"] > 1.5, result["scaled"]["ece"]["estimate"] < result["raw"]["ece"]["estimate"]
    (True, True)
    """
    arrays, source = _read_arrays(final_npz)
    test_logits, test_target = _load_split(arrays, "test", source)
    holdout = _load_split(arrays, "holdout", source, test_logits.shape[1])
    result = {"n_test": int(test_logits.shape[0]), "n_holdout": 0, "temperature": None,
              "raw": _scored(test_logits.double(), test_target, n_resamples, confidence, seed),
              "scaled": None}
    if holdout is not None:
        scaler = TemperatureScaling().fit(*holdout)
        result.update(n_holdout=int(holdout[0].shape[0]), temperature=scaler.temperature,
                      scaled=_scored(test_logits.double() / scaler.temperature, test_target,
                                     n_resamples, confidence, seed))
    return result


# Report section ---------------------------------------------------------------------------------

CALIBRATION = Claim(
    "calibration", "Smoothing calibrates",
    "A model trained with label smoothing is better calibrated (lower expected calibration error) than the "
    "same model trained without it.",
    "Müller, Kornblith & Hinton 2019, When does label smoothing help? (Section 3, Table 3); a blog post on "
    "label smoothing and over-confidence")
RELATIVE_MARGIN = 0.1  # of the baseline's ECE


def _calibrations(context: ReportContext, n_resamples: int) -> dict:
    """condition -> seed -> cell_calibration dict (stored by the sweep, or computed from final.npz)."""
    found: dict = {}
    for condition, runs in context.groups.items():
        for seed, run in runs.items():
            calibration = run.get("calibration")
            if calibration is None and (path := cell_file(context.run_dir, run, "final.npz")) is not None:
                calibration = cell_calibration(path, n_resamples=n_resamples)
            if calibration is not None:
                found.setdefault(condition, {})[seed] = calibration
    return found


def _per_seed(by_seed: dict, variant: str, metric: str) -> dict[int, float]:
    return {seed: c[variant][metric]["estimate"] for seed, c in by_seed.items() if c.get(variant)}


def _cell_text(by_seed: dict, variant: str, metric: str) -> str:
    """Mean [95% CI] over seeds, or with one seed the value [bootstrap CI over test rows]."""
    values = _per_seed(by_seed, variant, metric)
    if not values:
        return "-"
    if len(values) == 1:
        one = next(c[variant][metric] for c in by_seed.values() if c.get(variant))
        return f"{one['estimate']:.4f} [{one['low']:.4f}, {one['high']:.4f}]"
    return estimate(list(values.values()), BOUNDS.get(metric)).format()


def _temperature_text(by_seed: dict) -> str:
    temperatures = [c["temperature"] for c in by_seed.values() if c.get("temperature") is not None]
    return estimate(temperatures, (0.0, None)).format(3) if temperatures else "-"


def _table_rows(calibrations: dict, context: ReportContext) -> list[list[str]]:
    rows = []
    for condition, by_seed in calibrations.items():
        label = context.label(condition)
        rows.append([label, str(len(by_seed)), "1 (none)"] + [_cell_text(by_seed, "raw", m) for m in SUMMARY_METRICS])
        if any(c.get("scaled") for c in by_seed.values()):
            rows.append([label, str(len(by_seed)), f"fitted: {_temperature_text(by_seed)}"]
                        + [_cell_text(by_seed, "scaled", m) for m in SUMMARY_METRICS])
    return rows


def _figures(context: ReportContext) -> str:
    """Reliability diagrams (lowest seed per condition) at T = 1 and after scaling, written and embedded."""
    panels: dict[str, dict[str, tuple[Tensor, Tensor]]] = {"raw": {}, "scaled": {}}
    for condition, runs in context.groups.items():
        for seed in sorted(runs):
            cell = context.cell(runs[seed])
            if cell is not None:
                logits, target = cell.test
                name = f"{context.label(condition)}, seed {seed}"
                panels["raw"][name] = (torch.softmax(logits, 1), target)
                if cell.temperature is not None:
                    panels["scaled"][name] = (torch.softmax(logits / cell.temperature, 1), target)
                break
    figures = []
    titles = {"raw": "at T = 1 (as trained)",
              "scaled": "after temperature scaling (T fitted on the validation split)"}
    for variant, models in panels.items():
        if models:
            name = "calibration_reliability.png" if variant == "raw" else "calibration_reliability_scaled.png"
            figure = reliability_diagrams(models, title=f"Test split, {titles[variant]}")
            figures.append(embed_figure(figure, context.run_dir / name, f"Reliability diagrams, {titles[variant]}",
                                        wide=len(models) > 3))
    return figure_grid(figures)


def _validation_gap(context: ReportContext, runs: dict[int, dict]) -> dict[int, float]:
    """seed -> mean confidence minus accuracy of a condition's cells on the validation split, at T = 1."""
    gaps = {}
    for seed, run in runs.items():
        cell = context.cell(run)
        if cell is not None and cell.validation is not None:
            gaps[seed] = float(confidence_gap(*cell.validation, from_logits=True))
    return gaps


def _not_over_confident(context: ReportContext, base_runs: dict[int, dict]) -> str | None:
    gaps = _validation_gap(context, base_runs)
    if not gaps:
        return "the eps=0 cells have no validation split to check whether they are over-confident"
    gap = estimate(list(gaps.values()), BOUNDS["confidence_gap"])
    if gap.has_interval and gap.low <= 0:
        return (f"the eps=0 model is not over-confident on the validation split (mean confidence minus "
                f"accuracy {gap.format()}, an interval not above 0), so there is no over-confidence for "
                f"smoothing to remove")
    return None


def _confidence_lines(calibrations: dict, context: ReportContext) -> str:
    items = []
    for condition, by_seed in calibrations.items():
        gaps = _per_seed(by_seed, "raw", "confidence_gap")
        temperatures = [c["temperature"] for c in by_seed.values() if c.get("temperature") is not None]
        if not gaps:
            continue
        gap = estimate(list(gaps.values()), BOUNDS["confidence_gap"])
        state = ("under-confident" if gap.high is not None and gap.high < 0 else
                 "over-confident" if gap.low is not None and gap.low > 0 else
                 "neither clearly over- nor under-confident")
        fitted = (f"; the temperature fitted on validation is {estimate(temperatures, (0.0, None)).format(3)}"
                  if temperatures else "")
        items.append(f"<li>{escape(context.label(condition))}: mean confidence minus accuracy on the test split "
                     f"{escape(gap.format())}: {state}{escape(fitted)}</li>")
    return f"<ul>{''.join(items)}</ul>" if items else ""


def section(context: ReportContext, *, n_resamples: int = 200) -> SectionOutput:
    """Table, diagrams, over/under-confidence, and the calibration claim's verdicts."""
    title = "Calibration: label smoothing or temperature scaling?"
    calibrations = _calibrations(context, n_resamples)
    if not calibrations:
        return SectionOutput(title, "<p>No finished cell has a final.npz yet: nothing to score.</p>")
    header = ["condition", "seeds", "temperature T"] + [f"test {metric.title}" for metric in SUMMARY_METRICS.values()]
    sizes = sorted({(c["n_test"], c["n_holdout"]) for by_seed in calibrations.values() for c in by_seed.values()})
    size_text = "; ".join(f"{n_test} test rows, {n_holdout} validation rows" for n_test, n_holdout in sizes)
    verdicts = []
    for condition, base in context.pairs():
        if condition in calibrations and base in calibrations:
            treated, baseline = (_per_seed(calibrations[c], "raw", "ece") for c in (condition, base))
            margin = RELATIVE_MARGIN * sum(baseline.values()) / len(baseline)
            verdicts.append(judge(CALIBRATION, treated, baseline, section="calibration", split="test",
                                  contrast=context.contrast(condition, base), quantity="test ECE, as trained (T = 1)",
                                  primary=context.is_primary(condition), better="lower", margin=margin,
                                  scope=context.scope, bounds="ece",
                                  not_applicable=_not_over_confident(context, context.groups[base])))
    html = ("<p>In the shape of Müller et al. 2019, Table 3: each condition as trained (T = 1) and after "
            "temperature scaling (Guo et al. 2017), T fitted by minimum NLL on the validation split "
            f"({escape(size_text)} per cell). Several seeds: mean [95% Student-t interval over seeds, clipped to "
            "the metric's range]; one seed: the value [95% bootstrap interval over test rows]. ECE and "
            "class-wise ECE use 15 equal-width bins; MCE is the largest bin gap; confidence - accuracy &lt; 0 "
            "means under-confident. The claim's smallest effect that matters is 10% of the eps=0 ECE; it is "
            "tested only when the eps=0 model is over-confident on the validation split.</p>"
            + table(header, _table_rows(calibrations, context)) + _confidence_lines(calibrations, context)
            + _figures(context))
    return SectionOutput(title, html, verdicts)
