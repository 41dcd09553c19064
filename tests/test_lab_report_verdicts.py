"""lab.report.verdicts: the one rule on constructed intervals (every branch), the record built by
judge (its interval against scipy's paired t interval, its resolution), and the record schema.

The rule is restated here from its definition (an independent reference): with the interval
[a, b] of the predicted effect and the smallest effect that matters m, supported iff a > 0 and
b >= m; not supported iff b < m ("worse" / "the opposite" when b < 0, "negligible" when a > 0);
inconclusive otherwise and with fewer than 2 seeds; not applicable when a precondition fails.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from labelsmooth.lab.report.verdicts import FIELDS, Claim, check_record, judge, rule, unavailable, verdict_table

HELPS = Claim("helps", "Smoothing helps", "Smoothing lowers the quantity.", "a paper")
HARMS = Claim("harms", "Smoothing harms", "Smoothing lowers the quantity, which is bad.", "a paper",
              predicts="deterioration")


def reference_rule(a, b, m, n, not_applicable=False):
    """The rule as the report's documentation states it."""
    if n < 2:
        return "inconclusive"
    if not_applicable:
        return "not applicable"
    if a > 0 and b >= m:
        return "supported"
    if b < m:
        return "not supported"
    return "inconclusive"


@pytest.mark.parametrize("low, high, verdict, wording", [
    (0.02, 0.05, "supported", None),                    # excludes 0 and reaches the margin
    (0.001, 0.03, "supported", None),                   # reaches the margin exactly
    (0.001, 0.02, "not supported", "negligible"),       # real but smaller than what matters
    (-0.05, -0.01, "not supported", "worse"),           # the whole interval on the worsening side
    (-0.01, 0.02, "not supported", "ruled out"),        # contains 0, rules out the margin
    (-0.01, 0.05, "inconclusive", None),                # contains 0 and the margin
    (0.0, 0.05, "inconclusive", None),                  # touching 0 is not excluding it
])
def test_rule_on_constructed_intervals(low, high, verdict, wording):
    assert rule(low, high, 0.03, 3) == (verdict, wording)
    assert verdict == reference_rule(low, high, 0.03, 3)


def test_rule_with_one_seed_or_no_interval_is_inconclusive():
    assert rule(0.5, 0.9, 0.03, 1) == ("inconclusive", None)
    assert rule(None, None, 0.03, 5) == ("inconclusive", None)


def test_worse_is_the_opposite_for_a_claimed_deterioration():
    assert rule(-0.05, -0.01, 0.03, 3, "deterioration") == ("not supported", "opposite")


def paired(treated, baseline):
    return dict(enumerate(treated)), dict(enumerate(baseline))


def make(claim=HELPS, treated=(0.5, 0.52, 0.49), baseline=(0.6, 0.61, 0.62), better="lower", margin=0.03, **extra):
    return judge(claim, *paired(treated, baseline), section="test", split="test", contrast="eps=0.1 vs eps=0",
                 quantity="q", primary=True, better=better, margin=margin, scope="digits", **extra)


def test_judge_interval_matches_scipy_and_the_rule():
    treated, baseline = (0.50, 0.52, 0.49), (0.60, 0.61, 0.62)
    record = make(treated=treated, baseline=baseline)
    ci = stats.ttest_rel(treated, baseline).confidence_interval(0.95)
    assert (record["low"], record["high"]) == pytest.approx((ci.low, ci.high), abs=1e-5)
    assert record["mean"] == pytest.approx(np.mean(np.subtract(treated, baseline)))
    assert record["half_width"] == pytest.approx((ci.high - ci.low) / 2, abs=1e-5)
    # better = lower: the effect is -difference
    assert record["verdict"] == reference_rule(-record["high"], -record["low"], 0.03, 3) == "supported"
    assert set(FIELDS) <= set(record) and check_record(record, "here") is record


@pytest.mark.parametrize("treated, verdict, wording", [
    ((0.61, 0.62, 0.63), "not supported", "worse"),          # higher values: worse when lower is better
    ((0.595, 0.6, 0.61), "not supported", "negligible"),     # lower by ~0.01 < margin 0.03, but surely lower
    ((0.40, 0.70, 0.52), "inconclusive", None),
])
def test_judge_branches_on_per_seed_values(treated, verdict, wording):
    baseline = (0.60, 0.61, 0.62) if wording != "negligible" else (0.605, 0.612, 0.62)
    record = make(treated=treated, baseline=baseline)
    assert (record["verdict"], record["wording"]) == (verdict, wording), record


def test_a_claimed_deterioration_is_supported_when_the_quantity_gets_worse():
    # AUROC: higher is better; the claim predicts it drops
    record = make(HARMS, treated=(0.80, 0.81, 0.805), baseline=(0.84, 0.845, 0.842), better="higher", margin=0.01)
    assert record["verdict"] == "supported" and record["predicts"] == "deterioration"
    opposite = make(HARMS, treated=(0.88, 0.885, 0.882), baseline=(0.84, 0.845, 0.842), better="higher", margin=0.01)
    assert (opposite["verdict"], opposite["wording"]) == ("not supported", "opposite")


def test_resolution_says_how_many_seeds_would_resolve_the_margin():
    record = make(treated=(0.50, 0.60, 0.55), baseline=(0.55, 0.56, 0.57), margin=0.02)
    spread = np.std(np.subtract((0.50, 0.60, 0.55), (0.55, 0.56, 0.57)), ddof=1)
    needed = next(m for m in range(2, 10_000) if stats.t.ppf(0.975, m - 1) * spread / math.sqrt(m) <= 0.01)
    assert record["seeds_to_resolve"] == needed and record["resolvable"] == record["half_width"]


def test_one_seed_is_inconclusive_and_a_failed_precondition_is_not_applicable():
    one = make(treated=(0.1,), baseline=(0.9,))
    assert one["verdict"] == "inconclusive" and one["low"] is None and one["half_width"] is None
    assert one["n_seeds"] == 1 and "one seed" in one["reason"]
    failed = make(not_applicable="the baseline does not over-fit")
    assert failed["verdict"] == "not applicable" and "does not over-fit" in failed["reason"]
    # fewer than 2 seeds wins over the precondition
    assert make(treated=(0.1,), baseline=(0.9,), not_applicable="x")["verdict"] == "inconclusive"
    assert unavailable(HELPS, section="s", split="test", contrast="c", quantity="q", primary=True, better="lower",
                       margin=0.1, scope="", n_seeds=1, reason="r")["verdict"] == "inconclusive"


def test_bounded_quantities_are_clipped():
    # accuracy differences lie in [-1, 1]; a wide interval is clipped there
    record = make(treated=(0.99, 0.2, 0.99), baseline=(0.01, 0.9, 0.02), better="higher", bounds="accuracy")
    assert record["low"] >= -1.0 and record["high"] <= 1.0


def test_bad_direction_and_bad_records_are_refused():
    with pytest.raises(ValueError, match="better"):
        make(better="smaller")
    with pytest.raises(ValueError, match="predicts"):
        Claim("x", "x", "x", "x", predicts="maybe")
    with pytest.raises(ValueError, match="somewhere: expected verdict records"):
        check_record({"claim": "x", "verdict": "probably"}, "somewhere")


def test_table_escapes_and_folds_the_secondary_verdicts():
    record = make()
    secondary = {**make(), "primary": False, "contrast": "<b>eps</b>"}
    html = verdict_table([record, secondary])
    assert html.count("<table") == 2 and "<details>" in html and "1 secondary verdict" in html
    assert "&lt;b&gt;eps&lt;/b&gt;" in html and "<b>eps</b>" not in html
