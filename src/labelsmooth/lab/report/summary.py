"""The plain-language summary at the top of a report and in ``summary.txt``, from the verdict records.

One line for the run's scope, one line per claim (its primary verdict: the largest eps against
eps = 0, with the numbers and the smallest effect that matters), and one line saying whether a
simpler fix (temperature scaling, early stopping) did as well as smoothing on test NLL. Claims
without a primary verdict (no eps = 0 baseline, say) get no line.
"""

from __future__ import annotations

from ..stats import BOUNDS, estimate, paired_difference
from .context import ReportContext, final_metric, per_seed
from .verdicts import WORDINGS, difference_text

__all__ = ["claim_lines", "metrics_lines", "plain_summary", "simpler_fix_line"]

# fixes compared on test NLL: claim id -> what it is called
FIXES = {"beats-temperature-scaling": "temperature scaling of the unsmoothed model",
         "beats-early-stopping": "early stopping of the unsmoothed model"}


def _primary(records: list[dict]) -> dict[tuple[str, str], dict]:
    """(claim id, split) -> its primary record (the first), in the order the records came. Claims
    judged on two splits (the cluster claims: train and test) keep one primary per split."""
    found: dict[tuple[str, str], dict] = {}
    for record in records:
        if record["primary"]:
            found.setdefault((record["claim"], record["split"]), record)
    return found


def claim_lines(records: list[dict]) -> list[str]:
    """One sentence per claim with a primary verdict (the decisive comparisons have their own line)."""
    lines = []
    for (claim, _), record in _primary(records).items():
        if claim in FIXES:
            continue
        verdict = record["verdict"].upper() + (f" ({WORDINGS[record['wording']]})" if record["wording"] else "")
        if record["verdict"] == "not applicable" or record["mean"] is None:
            lines.append(f"{record['title']}: {verdict}; {record['reason'].removeprefix('not applicable: ')}.")
            continue
        numbers = (f"{record['contrast']}, {record['quantity']} ({record['split']} split): "
                   f"{record['baseline_mean']:#.4g} -> {record['treated_mean']:#.4g}, paired difference "
                   f"{difference_text(record)}, {record['better']} is better; smallest effect that matters "
                   f"{record['margin']:.3g}; {record['n_seeds']} seed{'s' * (record['n_seeds'] != 1)}")
        lines.append(f"{record['title']}: {verdict}. {numbers}.")
    return lines


def _against(record: dict | None, fix: str) -> str:
    if record is None:
        return f"{fix} was not compared"
    if record["verdict"] == "not applicable":
        return f"no comparison with {fix} ({record['reason'].removeprefix('not applicable: ')})"
    numbers = f"difference {difference_text(record)}"
    if record["verdict"] == "supported":
        return f"smoothing did better than {fix} ({numbers})"
    if record["verdict"] == "not supported":
        return f"{fix} did {'better' if record['wording'] == 'worse' else 'as well'} ({numbers})"
    return f"whether smoothing beats {fix} is undecided ({numbers})"


def simpler_fix_line(records: list[dict], context: ReportContext) -> str | None:
    """"Smoothing lowered test NLL by X [..]; temperature scaling of the unsmoothed model did as well; ..."."""
    condition = context.primary_condition
    if condition is None or not any(record["claim"] in FIXES for record in records):
        return None
    base = next(b for c, b in context.pairs() if c == condition)
    difference = paired_difference(per_seed(context.groups[condition], final_metric("nll")),
                                   per_seed(context.groups[base], final_metric("nll")), BOUNDS["nll"])
    if difference is None:
        return None
    direction = "lowered" if difference.mean < 0 else "raised"
    interval = (f" [{difference.low:+.4g}, {difference.high:+.4g}]" if difference.has_interval else " (1 seed)")
    primary = {claim: record for (claim, _), record in _primary(records).items()}
    parts = [_against(primary.get(claim), fix) for claim, fix in FIXES.items()]
    return (f"Is a simpler fix as good? {context.label(condition)} {direction} test NLL by {abs(difference.mean):.4g} "
            f"against {context.label(base)} as trained (paired difference {difference.mean:+.4g}{interval}); "
            + "; ".join(parts) + ".")


def metrics_lines(context: ReportContext) -> list[str]:
    """Final test metrics per condition, mean [95% CI] over seeds."""
    lines = ["Final test metrics, mean [95% CI] over seeds:"]
    for condition, runs in context.groups.items():
        parts = [f"{name} {estimate(list(v.values()), BOUNDS[name]).format()}" for name in ("accuracy", "nll", "ece")
                 if (v := per_seed(runs, final_metric(name)))]
        lines.append(f"  {context.label(condition):<12} {'; '.join(parts) or 'not finished'}")
    return lines


def plain_summary(records: list[dict], context: ReportContext) -> list[str]:
    """The summary's lines: scope, one per claim, the simpler-fix line (see the module docstring)."""
    lines = [f"What was tested: {context.scope}."]
    if context.legacy:
        lines.append("This run predates the lab's validation split: its per-epoch metrics came from the test split, "
                     "so verdicts that would choose on them are not applicable.")
    lines += claim_lines(records)
    fix = simpler_fix_line(records, context)
    if fix:
        lines.append(fix)
    if len(lines) == 1:
        lines.append("No claim can be tested on this run (no eps=0 baseline, or no finished cells).")
    return lines
