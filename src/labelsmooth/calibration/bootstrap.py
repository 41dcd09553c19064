"""Bootstrap confidence intervals of the calibration metrics, one metric or all at once.

:func:`bootstrap_ci` resamples rows and recomputes any metric; :func:`calibration_summary` gives
every metric of ``SUMMARY_METRICS`` with its interval from the same resamples, computed at once
from per-row contributions (the CLI table and the lab's cells use it).
"""

from __future__ import annotations

import inspect
from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

from .metrics import (
    NORMS,
    ArrayLike,
    BinStatistics,
    _as_tensor,
    _brier_rows,
    _check_bins,
    _correct_rows,
    _flat_bin_index,
    _gap_rows,
    _log_probabilities,
    _nll_rows,
    accuracy,
    brier_score,
    check_inputs,
    classwise_calibration_error,
    confidence_gap,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    top_label,
)

__all__ = ["SUMMARY_METRICS", "ConfidenceInterval", "SummaryMetric", "bootstrap_ci", "calibration_summary"]


class ConfidenceInterval(NamedTuple):
    """A metric on the full sample and its percentile-bootstrap interval."""

    estimate: float
    low: float
    high: float


def bootstrap_ci(metric_fn: Callable[..., Tensor], probs: ArrayLike, target: ArrayLike,
                 n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                 **kwargs) -> ConfidenceInterval:
    """Percentile-bootstrap interval of ``metric_fn(probs, target, **kwargs)``.

    Rows are resampled with replacement ``n_resamples`` times (a seeded CPU generator, so the
    interval is reproducible); the interval is the ``(1 -/+ confidence) / 2`` quantiles of the
    resampled values. The full-sample call validates the inputs; resamples of valid inputs are
    valid, so they pass ``validate_args=False`` when ``metric_fn`` accepts it.

    Binned calibration errors (ECE, MCE, class-wise) are biased upward on finite samples, and
    more so on resamples (duplicated rows add noise to every bin), so their percentile interval
    sits above the estimate and may not contain it when the estimate is small. Read it as the
    sampling spread of the estimator; :func:`debiased_l2_calibration_error` corrects the bias.

    >>> p = torch.softmax(torch.randn(200, 3, generator=torch.Generator().manual_seed(0)), 1)
    >>> y = torch.zeros(200, dtype=torch.long)
    >>> ci = bootstrap_ci(brier_score, p, y, n_resamples=50)
    >>> ci.low <= ci.estimate <= ci.high
    True
    """
    _check_bootstrap(n_resamples, confidence)
    probs, target = _as_tensor(probs, "probs"), _as_tensor(target, "target")
    estimate = float(metric_fn(probs, target, **kwargs))
    if "validate_args" in inspect.signature(metric_fn).parameters:
        kwargs = {**kwargs, "validate_args": False}
    generator = torch.Generator().manual_seed(seed)
    n = probs.shape[0]
    values = torch.empty(n_resamples, dtype=torch.float64)
    for i in range(n_resamples):
        rows = torch.randint(n, (n,), generator=generator).to(probs.device)
        values[i] = float(metric_fn(probs[rows], target.to(probs.device)[rows], **kwargs))
    return _interval(estimate, values, confidence)


def _check_bootstrap(n_resamples: int, confidence: float) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive int, got {n_resamples!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")


def _interval(estimate: float, resampled: Tensor, confidence: float) -> ConfidenceInterval:
    """Percentile interval: the ``(1 -/+ confidence) / 2`` quantiles of the resampled values."""
    tail = (1 - confidence) / 2
    quantiles = torch.tensor([tail, 1 - tail], dtype=torch.float64, device=resampled.device)
    low, high = torch.quantile(resampled.to(torch.float64), quantiles).tolist()
    return ConfidenceInterval(estimate, low, high)


class _Additive(NamedTuple):
    """A metric as a function of per-row contributions: ``finish(w @ rows)`` for row weights ``w``.

    ``rows`` (N, D) is dense or sparse COO; ``finish`` maps (B, D) weighted sums, whose weights
    total N, to B metric values. With ``w = 1`` it is the metric; with bootstrap counts
    (how often each row was drawn) it is the metric of that resample.
    """

    rows: Tensor
    finish: Callable[[Tensor], Tensor]


def _additive_mean(values: Tensor) -> _Additive:
    n = values.shape[0]
    return _Additive(values.to(torch.float64).unsqueeze(1), lambda sums: sums[:, 0] / n)


def _additive_binned(confidence: Tensor, outcome: Tensor, n_bins: int, norm: str) -> _Additive:
    """Equal-width binned error of groups (G, N), averaged over groups, as sparse contributions."""
    groups, n = confidence.shape
    slots = groups * n_bins
    column = _flat_bin_index(confidence, n_bins, "width").reshape(-1)
    row = torch.arange(n, device=confidence.device).repeat(groups)
    values = [torch.ones_like(confidence), confidence, outcome]
    indices = torch.stack([row.repeat(3), torch.cat([column + part * slots for part in range(3)])])
    rows = torch.sparse_coo_tensor(indices, torch.cat([v.reshape(-1).to(torch.float64) for v in values]),
                                   (n, 3 * slots), check_invariants=True).coalesce()

    def finish(sums: Tensor) -> Tensor:
        stats = BinStatistics(*sums.reshape(-1, 3, groups, n_bins).unbind(1))
        return NORMS[norm](stats).mean(-1)

    return _Additive(rows, finish)


def _top_label_binned(probs: Tensor, log_probs: Tensor, target: Tensor, n_bins: int, norm: str) -> _Additive:
    confidence, correct = top_label(probs, target)
    return _additive_binned(confidence.unsqueeze(0), correct.unsqueeze(0), n_bins, norm)


def _classwise_binned(probs: Tensor, log_probs: Tensor, target: Tensor, n_bins: int) -> _Additive:
    outcome = nn.functional.one_hot(target, probs.shape[1]).to(probs.dtype)
    return _additive_binned(probs.T, outcome.T, n_bins, "l1")


class SummaryMetric(NamedTuple):
    """An entry of ``SUMMARY_METRICS``: a column title, the public metric, and the same metric as
    per-row contributions, built from ``(probs, log_probs, target, n_bins)``."""

    title: str
    fn: Callable[..., Tensor]
    additive: Callable[[Tensor, Tensor, Tensor, int], _Additive]


# name -> metric reported by calibration_summary (the CLI table, the lab's cells), in this order
SUMMARY_METRICS: dict[str, SummaryMetric] = {
    "accuracy": SummaryMetric("accuracy", accuracy, lambda p, lp, y, nb: _additive_mean(_correct_rows(p, y))),
    "ece": SummaryMetric("ECE", expected_calibration_error,
                         lambda p, lp, y, nb: _top_label_binned(p, lp, y, nb, "l1")),
    "mce": SummaryMetric("MCE", maximum_calibration_error,
                         lambda p, lp, y, nb: _top_label_binned(p, lp, y, nb, "max")),
    "classwise_ece": SummaryMetric("class-wise ECE", classwise_calibration_error, _classwise_binned),
    "brier": SummaryMetric("Brier", brier_score, lambda p, lp, y, nb: _additive_mean(_brier_rows(p, y))),
    "nll": SummaryMetric("NLL", negative_log_likelihood, lambda p, lp, y, nb: _additive_mean(_nll_rows(lp, y))),
    "confidence_gap": SummaryMetric("confidence - accuracy", confidence_gap,
                                    lambda p, lp, y, nb: _additive_mean(_gap_rows(p, y))),
}

# Bootstrap count matrices are built this many entries (resamples x rows) at a time.
_COUNTS_PER_CHUNK = 1 << 22


def _weighted_sums(counts: Tensor, rows: Tensor) -> Tensor:
    """(B, N) counts times (N, D) dense or sparse rows: (B, D)."""
    if rows.is_sparse:
        return torch.sparse.mm(rows.t(), counts.t()).t()
    return counts @ rows


def calibration_summary(probs: ArrayLike, target: ArrayLike, *, n_bins: int = 15,
                        n_resamples: int = 200, confidence: float = 0.95, seed: int = 0,
                        from_logits: bool = False) -> dict[str, ConfidenceInterval]:
    """Every metric of ``SUMMARY_METRICS`` (equal-width bins) with its bootstrap interval.

    The same as ``bootstrap_ci(metric, probs, target, n_resamples, confidence, seed)`` for each
    metric (the same resampled rows), computed at once: every metric is a function of per-row
    contributions, so a resample is a vector of draw counts and all resamples are one product
    ``counts @ contributions`` instead of thousands of small metric calls.

    >>> p = torch.softmax(torch.randn(300, 3, generator=torch.Generator().manual_seed(0)), 1)
    >>> summary = calibration_summary(p, torch.zeros(300, dtype=torch.long), n_resamples=20)
    >>> list(summary)
    ['accuracy', 'ece', 'mce', 'classwise_ece', 'brier', 'nll', 'confidence_gap']
    """
    _check_bins(n_bins, "width")
    _check_bootstrap(n_resamples, confidence)
    values, target = check_inputs(probs, target, from_logits=from_logits)
    probs = torch.softmax(values, dim=1) if from_logits else values
    log_probs = _log_probabilities(values, from_logits)
    additive = {name: metric.additive(probs, log_probs, target, n_bins)
                for name, metric in SUMMARY_METRICS.items()}
    n = probs.shape[0]
    generator = torch.Generator().manual_seed(seed)
    resampled: dict[str, list[Tensor]] = {name: [] for name in additive}
    chunk = max(1, _COUNTS_PER_CHUNK // n)
    for start in range(0, n_resamples, chunk):
        draws = torch.stack([torch.randint(n, (n,), generator=generator)
                             for _ in range(min(chunk, n_resamples - start))]).to(probs.device)
        counts = torch.zeros(draws.shape[0], n, dtype=torch.float64, device=probs.device)
        counts.scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))
        for name, metric in additive.items():
            resampled[name].append(metric.finish(_weighted_sums(counts, metric.rows)))
    ones = torch.ones(1, n, dtype=torch.float64, device=probs.device)
    return {name: _interval(float(metric.finish(_weighted_sums(ones, metric.rows))[0]),
                            torch.cat(resampled[name]), confidence)
            for name, metric in additive.items()}
