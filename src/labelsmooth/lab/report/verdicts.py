"""The one verdict rule of the lab's reports, and the verdict record that ``verdicts.json`` holds.

**The rule** (:func:`rule`). A claim predicts that label smoothing changes a quantity in one
direction: an *improvement* (lower over-fitting, lower ECE, higher accuracy) or, for claims that
smoothing harms, a *deterioration* (worse misclassification detection, a worse distilled
student). From the 95% interval of the paired difference over seeds (eps minus the baseline, in
the quantity's units) the interval ``[a, b]`` of the *predicted effect* is formed (signed so that
positive is the direction the claim predicts), and with the claim's smallest effect that matters
``margin``:

- ``supported``: ``a > 0`` and ``b >= margin``;
- ``not supported``: ``b < margin``; worded ``"worse"`` when ``b < 0`` for a claimed improvement
  (``"the opposite"`` for a claimed deterioration), ``"negligible"`` ("real but smaller than the
  smallest effect that matters") when ``a > 0``;
- ``inconclusive``: otherwise, and always with fewer than 2 seeds (no interval);
- ``not applicable``: a stated precondition fails (the baseline does not over-fit; the
  baseline is not over-confident; distillation does not beat training the student directly; the
  run predates the validation split); the reason is given. Checked after the seed count.

**One primary contrast per claim**: the largest eps against eps = 0 on the claim's primary
quantity (named before the numbers). Every other verdict is *secondary*: shown, labelled
"secondary", and not corrected for multiplicity; the plain-language summary uses primaries only.

**Resolution**: every verdict states its number of seeds, the half-width ``h`` of the interval
(``resolvable``: an effect smaller than ``h`` cannot be told from 0 by this run) and roughly how
many seeds would make ``h <= margin / 2`` (``seeds_to_resolve``: then an effect of 0 and an effect
of the margin give intervals that exclude each other), if the spread stays as observed.

**The record** (:func:`judge` builds it; :data:`FIELDS` lists its keys): ``claim`` (id),
``title``, ``statement``, ``source`` (the paper or experiment the claim comes from), ``predicts``,
``section``, ``split`` (where the numbers come from: ``"train"``, ``"validation"`` or
``"test"``), ``contrast`` (``"eps=0.1 vs eps=0"``), ``quantity``, ``primary`` (bool), ``verdict``,
``wording``, ``better`` (``"higher"`` or ``"lower"``: which direction of the quantity is better),
``baseline_mean``, ``treated_mean``, ``mean``, ``low`` and ``high`` (the paired difference eps -
baseline and its 95% interval, in the quantity's units; None with one seed), ``margin``,
``n_seeds``, ``half_width``, ``resolvable``, ``seeds_to_resolve``, ``scope`` (data, model, epochs,
seeds, quick or full) and ``reason`` (why this verdict, in words). The report's HTML and
``summary.txt`` are rendered from these records (:func:`verdict_table`), after they are written
to ``verdicts.json``.

**A report section** is one module with a function ``section(context) -> SectionOutput``
(:mod:`labelsmooth.lab.report.context`): it returns its title, its HTML and the verdict records
it made with :func:`judge` (or :func:`unavailable`, for a contrast without numbers); the builder
adds the section to the table of contents, renders its verdicts under it and collects
them into ``verdicts.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..stats import BOUNDS, estimate, paired_difference, seeds_to_reach
from .html import escape

__all__ = ["FIELDS", "VERDICTS", "Claim", "check_record", "judge", "rule", "unavailable", "verdict_table"]

VERDICTS = ("supported", "not supported", "inconclusive", "not applicable")
FIELDS = ("claim", "title", "statement", "source", "predicts", "section", "split", "contrast", "quantity",
          "primary", "verdict", "wording", "better", "baseline_mean", "treated_mean", "mean", "low", "high",
          "margin", "n_seeds", "half_width", "resolvable", "seeds_to_resolve", "scope", "reason")
WORDINGS = {"worse": "worse", "opposite": "the opposite of the claim",
            "negligible": "real but smaller than the smallest effect that matters",
            "ruled out": "an effect as large as the smallest that matters is ruled out"}


@dataclass(frozen=True)
class Claim:
    """A claim a report tests: ``id`` (stable, e.g. ``"calibration"``), a short ``title``, the
    ``statement``, its ``source`` (a paper, or an experiment described in words) and whether it
    ``predicts`` an ``"improvement"`` or a ``"deterioration"`` from label smoothing."""

    id: str
    title: str
    statement: str
    source: str
    predicts: str = "improvement"

    def __post_init__(self) -> None:
        if self.predicts not in ("improvement", "deterioration"):
            raise ValueError(f"predicts: expected 'improvement' or 'deterioration', got {self.predicts!r}")


def rule(low: float | None, high: float | None, margin: float, n_seeds: int,
         predicts: str = "improvement") -> tuple[str, str | None]:
    """(verdict, wording) from the interval ``[low, high]`` of the predicted effect (positive: the
    direction the claim predicts) and the smallest effect that matters ``margin``.

    >>> rule(0.02, 0.05, 0.03, 3), rule(0.001, 0.02, 0.03, 3), rule(-0.05, -0.01, 0.03, 3)
    (('supported', None), ('not supported', 'negligible'), ('not supported', 'worse'))
    >>> rule(-0.01, 0.02, 0.03, 3), rule(-0.01, 0.05, 0.03, 3), rule(0.02, 0.05, 0.03, 1)
    (('not supported', 'ruled out'), ('inconclusive', None), ('inconclusive', None))
    """
    if n_seeds < 2 or low is None or high is None:
        return "inconclusive", None
    if low > 0 and high >= margin:
        return "supported", None
    if high < margin:
        if high < 0:
            return "not supported", "worse" if predicts == "improvement" else "opposite"
        return "not supported", "negligible" if low > 0 else "ruled out"
    return "inconclusive", None


def _base_record(claim: Claim, *, section: str, split: str, contrast: str, quantity: str, primary: bool,
                 better: str, margin: float, scope: str) -> dict:
    if better not in ("higher", "lower"):
        raise ValueError(f"better: expected 'higher' or 'lower', got {better!r}")
    return dict(claim=claim.id, title=claim.title, statement=claim.statement, source=claim.source,
                predicts=claim.predicts, section=section, split=split, contrast=contrast, quantity=quantity,
                primary=bool(primary), verdict="inconclusive", wording=None, better=better, baseline_mean=None,
                treated_mean=None, mean=None, low=None, high=None, margin=float(margin), n_seeds=0,
                half_width=None, resolvable=None, seeds_to_resolve=None, scope=scope, reason="")


def judge(claim: Claim, treated: dict[int, float], baseline: dict[int, float], *, section: str, split: str,
          contrast: str, quantity: str, primary: bool, better: str, margin: float, scope: str,
          bounds: str | None = None, not_applicable: str | None = None) -> dict:
    """The verdict record of one contrast: ``treated`` and ``baseline`` map seed -> value of the
    quantity (paired by seed); ``bounds`` names the quantity's range in :data:`BOUNDS` (intervals are
    clipped to it); ``not_applicable`` is the failed precondition, if any.

    >>> claim = Claim("accuracy", "accuracy", "Smoothing improves accuracy.", "a paper")
    >>> record = judge(claim, {0: 0.82, 1: 0.83, 2: 0.84}, {0: 0.80, 1: 0.81, 2: 0.82}, section="overview",
    ...                split="test", contrast="eps=0.1 vs eps=0", quantity="test accuracy", primary=True,
    ...                better="higher", margin=0.002, scope="digits")
    >>> record["verdict"], round(record["mean"], 3), record["n_seeds"]
    ('supported', 0.02, 3)
    """
    record = _base_record(claim, section=section, split=split, contrast=contrast, quantity=quantity,
                          primary=primary, better=better, margin=margin, scope=scope)
    range_ = BOUNDS.get(bounds) if bounds else None
    difference = paired_difference(treated, baseline, range_)
    if difference is None:
        record["reason"] = "no seed has both conditions, so there is nothing to pair"
        return record
    record.update(n_seeds=difference.n, mean=difference.mean, low=difference.low, high=difference.high,
                  baseline_mean=estimate(list(baseline.values())).mean,
                  treated_mean=estimate(list(treated.values())).mean)
    if difference.has_interval:
        record.update(half_width=difference.half_width, resolvable=difference.half_width)
        if margin > 0:
            record["seeds_to_resolve"] = seeds_to_reach(difference.half_width, difference.n, margin / 2)
    sign = (1.0 if better == "higher" else -1.0) * (1.0 if claim.predicts == "improvement" else -1.0)
    effect = sorted((sign * difference.low, sign * difference.high)) if difference.has_interval else (None, None)
    verdict, wording = rule(effect[0], effect[1], margin, difference.n, claim.predicts)
    if not_applicable and difference.n >= 2:
        verdict, wording = "not applicable", None
    record.update(verdict=verdict, wording=wording,
                  reason=_reason(verdict, wording, effect, margin, difference.n, not_applicable))
    return record


def unavailable(claim: Claim, *, section: str, split: str, contrast: str, quantity: str, primary: bool,
                better: str, margin: float, scope: str, n_seeds: int, reason: str) -> dict:
    """The record of a contrast whose numbers cannot be had (``reason`` says why): "not applicable",
    or "inconclusive" with fewer than 2 seeds, as the rule orders them.

    >>> claim = Claim("x", "x", "Smoothing helps.", "a paper")
    >>> unavailable(claim, section="s", split="test", contrast="eps=0.1 vs eps=0", quantity="q", primary=True,
    ...             better="lower", margin=0.1, scope="", n_seeds=3, reason="no early-stopped weights")["verdict"]
    'not applicable'
    """
    record = _base_record(claim, section=section, split=split, contrast=contrast, quantity=quantity,
                          primary=primary, better=better, margin=margin, scope=scope)
    verdict = "not applicable" if n_seeds >= 2 else "inconclusive"
    record.update(n_seeds=n_seeds, verdict=verdict,
                  reason=_reason(verdict, None, (None, None), margin, n_seeds, reason))
    return record


def _reason(verdict: str, wording: str | None, effect: Sequence, margin: float, n_seeds: int,
            not_applicable: str | None) -> str:
    if verdict == "not applicable":
        return f"not applicable: {not_applicable}"
    if n_seeds < 2:
        return "one seed gives no interval over training runs; every verdict needs at least 2 seeds"
    low, high = effect
    interval = f"the predicted effect's interval [{low:.3g}, {high:.3g}]"
    if verdict == "supported":
        return f"{interval} excludes 0 and reaches the smallest effect that matters ({margin:.3g})"
    if verdict == "not supported":
        return f"{interval} lies below the smallest effect that matters ({margin:.3g}): {WORDINGS[wording]}"
    return (f"{interval} contains both 0 and the smallest effect that matters ({margin:.3g}); more seeds would "
            f"narrow it")


def check_record(record: dict, where: str) -> dict:
    """``record`` if it has every key of :data:`FIELDS` and a known verdict; else ValueError naming ``where``."""
    missing = [key for key in FIELDS if key not in record]
    if missing or record.get("verdict") not in VERDICTS:
        raise ValueError(f"{where}: expected verdict records with keys {list(FIELDS)} and verdict in "
                         f"{list(VERDICTS)}, got one missing {missing} with verdict {record.get('verdict')!r}")
    return record


# Rendering (from the records, as verdicts.json holds them) ----------------------------------------


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def difference_text(record: dict) -> str:
    """``"-0.0950 [-0.110, -0.0800]"``: the paired difference and its interval, as recorded."""
    if record["mean"] is None:
        return "-"
    if record["low"] is None:
        return f"{record['mean']:+.4g} (1 seed: no interval)"
    return f"{record['mean']:+.4g} [{record['low']:+.4g}, {record['high']:+.4g}]"


def verdict_words(record: dict) -> str:
    """``"not supported (worse)"``, ``"supported"``, ...; secondaries say so."""
    words = record["verdict"] + (f" ({WORDINGS[record['wording']]})" if record["wording"] else "")
    return words if record["primary"] else f"{words}; secondary"


def resolution_text(record: dict) -> str:
    """Seeds, half-width and the seeds that would resolve the margin, in words."""
    if record["half_width"] is None:
        return f"{record['n_seeds']} seed(s): no interval"
    needed = record["seeds_to_resolve"]
    if record["verdict"] in ("supported", "not supported"):
        return f"{record['n_seeds']} seeds, half-width {_number(record['half_width'], 3)}: enough to decide"
    more = ("already resolves the margin" if needed is not None and needed <= record["n_seeds"] else
            f"about {needed} seeds would resolve the margin" if needed else "over 10,000 seeds would be needed")
    return f"{record['n_seeds']} seeds, half-width {_number(record['half_width'], 3)}; {more}"


def _rows(records: list[dict]) -> str:
    rows = []
    for record in records:
        css = escape(record["verdict"].replace(" ", "-"))
        rows.append(
            f"<tr><td>{escape(record['title'])}</td><td>{escape(record['contrast'])}</td>"
            f"<td>{escape(record['quantity'])} ({escape(record['split'])}; {escape(record['better'])} is better)</td>"
            f'<td class="{css}">{escape(verdict_words(record))}</td>'
            f"<td>{escape(difference_text(record))}</td><td>{escape(_number(record['margin'], 3))}</td>"
            f"<td>{escape(resolution_text(record))}</td><td>{escape(record['reason'])}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("claim", "contrast", "quantity (split)", "verdict",
                                              "paired difference eps - baseline [95% CI]",
                                              "smallest effect that matters", "resolution", "why"))
    return f'<table class="verdict-table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def verdict_table(records: list[dict]) -> str:
    """HTML tables of verdict records, every string escaped: the primary ones, then the secondary
    ones folded in a ``<details>`` element (open it to read them)."""
    primary = [r for r in records if r["primary"]]
    secondary = [r for r in records if not r["primary"]]
    html = _rows(primary) if primary else ""
    if secondary:
        html += (f"<details><summary>{len(secondary)} secondary verdict{'s' * (len(secondary) != 1)} (other eps, "
                 f"other quantities; not corrected for multiplicity)</summary>{_rows(secondary)}</details>")
    return html
