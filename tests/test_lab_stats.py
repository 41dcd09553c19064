"""lab.stats: Student-t quantiles, intervals over seeds and paired differences, against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from labelsmooth.lab.stats import estimate, paired_difference, t_quantile_975


def test_t_quantile_matches_scipy():
    for df in range(1, 400):
        tolerance = 6e-5 if df <= 30 else 1e-6  # table to 4 decimals; expansion beyond
        assert abs(t_quantile_975(df) - stats.t.ppf(0.975, df)) < tolerance, df


@pytest.mark.parametrize("n", [2, 3, 5, 10, 40])
def test_estimate_matches_scipy_t_interval(n):
    values = np.random.default_rng(n).normal(0.3, 0.05, size=n)
    expected = stats.t.interval(0.95, n - 1, loc=values.mean(), scale=stats.sem(values))
    found = estimate(values.tolist())
    assert found.mean == pytest.approx(values.mean(), abs=1e-12)
    assert (found.low, found.high) == pytest.approx(expected, abs=1e-5)


def test_paired_difference_matches_scipy_paired_t():
    rng = np.random.default_rng(0)
    baseline = rng.normal(0.5, 0.1, size=5)
    treated = baseline - 0.02 + rng.normal(0, 0.005, size=5)
    expected = stats.ttest_rel(treated, baseline).confidence_interval(0.95)
    found = paired_difference(dict(enumerate(treated)), {**dict(enumerate(baseline)), 9: 3.0})
    assert found.n == 5  # seed 9 has no partner
    assert (found.low, found.high) == pytest.approx((expected.low, expected.high), abs=1e-5)
    assert paired_difference({0: 1.0}, {1: 1.0}) is None


def test_single_seed_has_no_interval_and_bad_input_is_refused():
    single = estimate([0.25])
    assert (single.low, single.high, single.has_interval) == (None, None, False)
    assert "n/a (1 seed)" in single.format()
    with pytest.raises(ValueError, match="values"):
        estimate([])
    with pytest.raises(ValueError, match="finite"):
        estimate([1.0, float("nan")])
    with pytest.raises(ValueError, match="df"):
        t_quantile_975(0)
