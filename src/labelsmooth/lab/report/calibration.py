"""The calibration section of a lab report: per-cell metrics before and after temperature scaling,
and the answer to "label smoothing or temperature scaling?" with numbers.

``cell_calibration(final_npz)`` scores one finished cell (``cells/<key>/final.npz`` of the lab
contract): on the test split, the metrics of ``bootstrap.SUMMARY_METRICS`` (accuracy, ECE, MCE,
class-wise ECE, Brier, NLL, the signed confidence gap = mean confidence - accuracy), each with a
percentile-bootstrap interval over test rows; the temperature fitted on the holdout split; and the
same metrics after scaling. The result is plain JSON, so the sweep can store it as ``run["calibration"]``.

``report_section(results, run_dir)`` (one of the sweep report's sections) builds a table in the
shape of Müller et al. 2019, Table 3 (each condition at T = 1 and after temperature scaling with
its T), reliability diagrams per condition before and after scaling
(``calibration_reliability*.png``, also embedded), and verdicts:

- "smoothing beats temperature scaling": ECE(eps, T=1) against ECE(eps=0, fitted T);
- "smoothing still helps after scaling": ECE(eps, fitted T) against ECE(eps=0, fitted T);
  both judged by :func:`labelsmooth.lab.report.overview.judge` on per-seed paired differences
  (one seed is inconclusive, as for the report's other claims);
- "smoothing does not make the model under-confident": the confidence gap at T = 1. Its interval
  (Student t over seeds, or with one seed the bootstrap over test rows, which measures this
  model on this test set) entirely below 0 is flagged as under-confidence (not supported),
  entirely above 0 as remaining over-confidence (not supported); an interval inside
  ``+-GAP_TOLERANCE`` is supported; anything else is inconclusive.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import Tensor

from ...calibration.bootstrap import SUMMARY_METRICS, calibration_summary
from ...calibration.diagrams import reliability_diagrams
from ...calibration.metrics import check_inputs
from ...calibration.scaling import TemperatureScaling
from ..rundir import cell_file
from ..stats import Estimate, estimate, paired_difference
from .html import embed_figure, escape, table
from .overview import baseline_of, condition_label, group_runs, judge

__all__ = ["GAP_TOLERANCE", "cell_calibration", "report_section"]

SPLIT_ARRAYS = {"test": ("test_logits", "test_target"), "holdout": ("holdout_logits", "holdout_target")}
# |mean confidence - accuracy| below this counts as calibrated overall (the under-confidence claim)
GAP_TOLERANCE = 0.01


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


def _calibrations(results: dict, run_dir: Path, n_resamples: int) -> dict:
    """condition -> seed -> cell_calibration dict (stored by the sweep, or computed from final.npz)."""
    found: dict = {}
    for condition, runs in group_runs(results).items():
        for seed, run in runs.items():
            calibration = run.get("calibration")
            if calibration is None and (path := cell_file(run_dir, run, "final.npz")) is not None:
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
    return estimate(list(values.values())).format()


def _temperature_text(by_seed: dict) -> str:
    temperatures = [c["temperature"] for c in by_seed.values() if c.get("temperature") is not None]
    return estimate(temperatures).format(3) if temperatures else "-"


def _table_rows(calibrations: dict, groups: dict) -> list[list[str]]:
    rows = []
    for condition, by_seed in calibrations.items():
        label = condition_label(condition, groups)
        metrics = [_cell_text(by_seed, "raw", m) for m in SUMMARY_METRICS]
        rows.append([label, str(len(by_seed)), "1 (none)"] + metrics)
        if any(c.get("scaled") for c in by_seed.values()):
            rows.append([label, str(len(by_seed)), f"fitted: {_temperature_text(by_seed)}"]
                        + [_cell_text(by_seed, "scaled", m) for m in SUMMARY_METRICS])
    return rows


def _probabilities(path: Path) -> dict[str, tuple[Tensor, Tensor]]:
    """Test probabilities of one cell at T = 1 and after temperature scaling (when a holdout exists)."""
    arrays, source = _read_arrays(path)
    logits, target = _load_split(arrays, "test", source)
    found = {"raw": (torch.softmax(logits.double(), 1), target)}
    holdout = _load_split(arrays, "holdout", source, logits.shape[1])
    if holdout is not None:
        found["scaled"] = (TemperatureScaling().fit(*holdout).transform(logits.double()), target)
    return found


def _figures(results: dict, run_dir: Path, groups: dict) -> str:
    """Reliability diagrams (lowest seed per condition) at T = 1 and after scaling, written and embedded."""
    panels: dict[str, dict[str, tuple[Tensor, Tensor]]] = {"raw": {}, "scaled": {}}
    for condition, runs in groups.items():
        for seed in sorted(runs):
            path = cell_file(run_dir, runs[seed], "final.npz")
            if path is not None:
                for variant, pair in _probabilities(path).items():
                    panels[variant][f"{condition_label(condition, groups)}, seed {seed}"] = pair
                break
    html_parts = []
    titles = {"raw": "at T = 1 (as trained)",
              "scaled": "after temperature scaling (T fitted on the holdout split)"}
    for variant, models in panels.items():
        if not models:
            continue
        name = "calibration_reliability.png" if variant == "raw" else "calibration_reliability_scaled.png"
        html_parts.append(embed_figure(reliability_diagrams(models, title=f"Test split, {titles[variant]}"),
                                       run_dir / name, f"Reliability diagrams, {titles[variant]}"))
    return "".join(html_parts)


def _comparison_verdict(statement: str, scope: str, treated: dict[int, float], baseline: dict[int, float],
                        labels: tuple[str, str]) -> dict | None:
    """Verdict on "``treated`` ECE is lower than ``baseline`` ECE" (per-seed dicts), by ``judge``."""
    if not treated or not baseline:
        return None
    difference = paired_difference(treated, baseline)
    margin = 0.1 * sum(baseline.values()) / len(baseline)
    verdict = judge(difference, "lower", margin)
    reason = {
        "supported": "the 95% interval of the paired difference lies below 0",
        "not supported": f"the interval rules out a reduction of {margin:.4g} (10% of the reference "
                         f"ECE) or more",
        "inconclusive": ("one seed gives no interval over training runs; run more seeds"
                         if difference is None or not difference.has_interval else
                         f"the interval contains both 0 and a reduction of {margin:.4g}"),
    }[verdict]
    evidence = (f"{verdict.capitalize()}: {reason}. Test ECE: "
                f"{labels[1]} {estimate(list(baseline.values())).format()}, "
                f"{labels[0]} {estimate(list(treated.values())).format()}; paired difference "
                f"{difference.format() if difference else 'n/a (no shared seed)'}.")
    return dict(claim="2", statement=statement, scope=scope, verdict=verdict, evidence=evidence)


def _gap_interval(by_seed: dict) -> tuple[Estimate, str]:
    values = _per_seed(by_seed, "raw", "confidence_gap")
    if len(values) > 1:
        return estimate(list(values.values())), "95% interval over seeds"
    one = next(iter(by_seed.values()))["raw"]["confidence_gap"]
    return Estimate(one["estimate"], one["low"], one["high"], 1), \
        "bootstrap interval over test rows (one seed: this model, this test set)"


def _under_confidence_verdict(condition, by_seed: dict, groups: dict) -> dict:
    gap, kind = _gap_interval(by_seed)
    temperatures = [c["temperature"] for c in by_seed.values() if c.get("temperature") is not None]
    t_text = f"; the NLL-optimal temperature is {estimate(temperatures).format(3)}" if temperatures else ""
    if gap.high < 0:
        verdict, finding = "not supported", (f"the model is UNDER-CONFIDENT: its mean confidence is below its "
                                             f"accuracy{t_text} (T < 1 sharpens it)")
    elif gap.low > 0:
        verdict, finding = "not supported", f"the model is still over-confident{t_text}"
    elif -GAP_TOLERANCE <= gap.low and gap.high <= GAP_TOLERANCE:
        verdict, finding = "supported", f"confidence matches accuracy within +-{GAP_TOLERANCE}{t_text}"
    else:
        verdict, finding = "inconclusive", (f"the interval contains 0 but is wider than "
                                            f"+-{GAP_TOLERANCE}{t_text}")
    return dict(claim="2", statement="Label smoothing removes over-confidence without making the model "
                "under-confident (a blog post; Müller et al. 2019)", scope=condition_label(condition, groups),
                verdict=verdict,
                evidence=f"{verdict.capitalize()}: {finding}. Mean confidence minus accuracy at T = 1: "
                         f"{gap.format()} ({kind}).")


def _verdicts(calibrations: dict, groups: dict) -> list[dict]:
    verdicts = []
    for condition, by_seed in calibrations.items():
        base = baseline_of(condition, groups)
        if base is None or base not in calibrations:
            continue
        label, base_label = condition_label(condition, groups), condition_label(base, groups)
        scope = f"{label} vs {base_label}"
        baseline_scaled = _per_seed(calibrations[base], "scaled", "ece")
        scaled_labels = (f"{label} after temperature scaling", f"{base_label} after temperature scaling")
        found = [
            _comparison_verdict("Label smoothing calibrates better than temperature scaling of the eps=0 "
                                "model (Müller et al. 2019, Table 3, found the two close)", scope,
                                _per_seed(by_seed, "raw", "ece"), baseline_scaled,
                                (f"{label} at T = 1", scaled_labels[1])),
            _comparison_verdict("Label smoothing still improves calibration once both models are "
                                "temperature-scaled", scope, _per_seed(by_seed, "scaled", "ece"),
                                baseline_scaled, scaled_labels),
            _under_confidence_verdict(condition, by_seed, groups),
        ]
        verdicts += [v for v in found if v is not None]
    return verdicts


def report_section(results: dict, run_dir: Path, *, n_resamples: int = 200) -> tuple[str, list[dict]]:
    """HTML fragment (table, diagrams) and verdicts on calibration: smoothing vs temperature scaling."""
    run_dir = Path(run_dir)
    groups = group_runs(results)
    calibrations = _calibrations(results, run_dir, n_resamples)
    heading = "<h2>Calibration: label smoothing or temperature scaling?</h2>"
    if not calibrations:
        return heading + "<p>No finished cell has a final.npz yet: nothing to score.</p>", []
    header = (["condition", "seeds", "temperature T"]
              + [f"test {metric.title}" for metric in SUMMARY_METRICS.values()])
    sizes = sorted({(c["n_test"], c["n_holdout"])
                    for by_seed in calibrations.values() for c in by_seed.values()})
    size_text = "; ".join(f"{n_test} test rows, {n_holdout} holdout rows" for n_test, n_holdout in sizes)
    fragment = (heading + "<p>In the shape of Müller et al. 2019, Table 3: each condition as trained "
                f"(T = 1) and after temperature scaling, T fitted by minimum NLL on the holdout split "
                f"({escape(size_text)} per cell). "
                "Several seeds: mean [95% Student-t interval over seeds]; one seed: the value "
                "[95% bootstrap interval over test rows]. ECE and class-wise ECE use 15 equal-width "
                "bins; MCE is the largest bin gap; confidence - accuracy &lt; 0 means under-confident."
                "</p>" + table(header, _table_rows(calibrations, groups))
                + f'<div class="figures">{_figures(results, run_dir, groups)}</div>')
    return fragment, _verdicts(calibrations, groups)
