"""The report of a lab run: ``build_report(run_dir)`` and the ``labelsmooth report`` command.

``build_report`` reads ``results.json`` (and ``config.json``; plain JSON, see the lab contract),
runs the report's sections and writes, atomically, into the run directory:

- ``report.html``: one page that loads nothing from the network (images are ``data:`` URIs,
  every user string is escaped): the claims tested with their sources, the verdicts, then the
  sections;
- the sections' figures as PNG files (``curves_<metric>.png``, ``calibration_reliability*.png``,
  ``penultimate_*.png``, ``distillation_students.png``);
- ``summary.txt``: the short text summary the commands print.

A section is a function ``(results, run_dir) -> (html_fragment, verdicts)``. A sweep's report has
the :data:`SWEEP_SECTIONS`; a distillation run's (its config names ``teacher_widths``) the
:data:`DISTILLATION_SECTIONS`, so ``labelsmooth report`` rebuilds either kind of run directory.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from ..rundir import load_results, write_bytes
from ..stats import estimate
from . import calibration, distillation, overview, penultimate
from .html import escape

__all__ = ["DISTILLATION_SECTIONS", "SWEEP_SECTIONS", "add_arguments", "build_report", "run", "sections_for",
           "summary_text"]

Section = Callable[[dict, Path], "tuple[str, list[dict]]"]

SWEEP_SECTIONS: tuple[Section, ...] = (
    overview.config_section,
    overview.summary_section,
    overview.overfitting_section,
    overview.curves_section,
    calibration.report_section,
    penultimate.report_section,
)
DISTILLATION_SECTIONS: tuple[Section, ...] = (
    overview.config_section,
    distillation.distillation_section,
    distillation.teacher_penultimate_section,
)


def sections_for(results: dict) -> tuple[Section, ...]:
    """The sections of a run's report: a distillation run's, or a sweep's."""
    return DISTILLATION_SECTIONS if distillation.is_distillation(results.get("config") or {}) else SWEEP_SECTIONS


def _checked_verdicts(section: Section, verdicts: list[dict]) -> list[dict]:
    for verdict in verdicts:
        if not set(overview.VERDICT_KEYS) <= set(verdict) or verdict["verdict"] not in overview.VERDICTS:
            raise ValueError(f"report section {section.__module__}.{section.__qualname__}: expected verdicts "
                             f"with keys {overview.VERDICT_KEYS} and verdict in {overview.VERDICTS}, "
                             f"got {verdict!r}")
    return verdicts


def _claims_html(verdicts: list[dict]) -> str:
    """The claims that the verdicts judge, each with its source."""
    claims = [claim for claim in overview.CLAIMS if any(str(v["claim"]) == claim for v in verdicts)]
    if not claims:
        return ""
    items = "".join(f"<li><b>Claim {claim}, {escape(overview.CLAIMS[claim][0])}.</b> "
                    f"{escape(overview.CLAIMS[claim][1])}</li>" for claim in claims)
    return f'<h2>The claims tested</h2><ul class="claims">{items}</ul>'


def _verdict_list_html(verdicts: list[dict]) -> str:
    if not verdicts:
        return "<p>No claim can be tested on this run (no eps=0 baseline or no results).</p>"
    items = "".join(
        f'<li class="{escape(v["verdict"].replace(" ", "-"))}"><b>Claim {escape(v["claim"])}, '
        f'{escape(v["scope"])}: {escape(v["verdict"])}.</b> {escape(v["statement"])}.<br>'
        f'{escape(v["evidence"])}</li>' for v in verdicts)
    data = json.dumps(verdicts).replace("<", "\\u003c")
    return (f'<ul class="verdicts">{items}</ul>'
            f'<script type="application/json" id="verdicts-data">{data}</script>')


_STYLE = """body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;
color:#222}table{border-collapse:collapse;margin:.5rem 0 1rem}td,th{border:1px solid #ccc;
padding:.25rem .5rem;font-size:.9rem;text-align:left}th{background:#f3f3f3}.figures{display:flex;
flex-wrap:wrap;gap:1rem}figure{margin:0}img{max-width:100%}.verdicts li{margin:.5rem 0}
.supported b{color:#1a7f37}.not-supported b{color:#b3261e}.inconclusive b{color:#8a6d00}"""


def summary_text(results: dict, verdicts: list[dict]) -> str:
    """The few lines a command prints: final test metrics per condition and the verdicts."""
    groups = overview.group_runs(results)
    lines = ["Final test metrics, mean [95% CI] over seeds:"]
    for condition, runs in groups.items():
        parts = [f"{name} {estimate(list(v.values())).format()}" for name in ("accuracy", "nll", "ece")
                 if (v := overview.per_seed(runs, overview.final_metric(name)))]
        lines.append(f"  {overview.condition_label(condition, groups):<12} {'; '.join(parts) or 'not finished'}")
    lines.append("Verdicts on the published claims (report.html states each claim and its source):")
    lines += [f"  claim {v['claim']} ({v['scope']}): {v['verdict'].upper()} - {v['statement'].split(' (')[0]}"
              for v in verdicts]
    if not verdicts:
        lines.append("  none testable on this run")
    return "\n".join(lines)


def build_report(run_dir: str | os.PathLike, *, sections: Sequence[Section] | None = None) -> Path:
    """Write the plots, report.html and summary.txt of a run directory; return report.html's path.

    ``sections`` default to :func:`sections_for` the run.

    >>> import json, tempfile, pathlib
    >>> run = pathlib.Path(tempfile.mkdtemp())
    >>> history = [{"epoch": e, "val_nll": 1 / e} for e in (1, 2)]
    >>> runs = [{"label_smoothing": 0.0, "seed": 0, "history": history, "test": {"nll": 0.5}}]
    >>> _ = (run / "results.json").write_text(json.dumps({"config": {}, "runs": runs}))
    >>> build_report(run).name
    'report.html'
    """
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    fragments, verdicts = [], []
    for section in sections_for(results) if sections is None else sections:
        fragment, found = section(results, run_dir)
        fragments.append(f"<section>{fragment}</section>")
        verdicts += _checked_verdicts(section, found)
    verdicts.sort(key=lambda v: str(v["claim"]))
    status = "complete" if results.get("complete") else "not complete (partial results)"
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>labelsmooth report: {escape(run_dir.name)}</title><style>{_STYLE}</style></head>"
            f"<body><h1>Label smoothing lab: {escape(run_dir.name)}</h1>"
            f"<p>Run directory <code>{escape(run_dir.resolve())}</code>, {escape(status)}, "
            f"{len(results['runs'])} cells.</p>{_claims_html(verdicts)}"
            f"<h2>Verdicts</h2>{_verdict_list_html(verdicts)}"
            + "".join(fragments) + "</body></html>")
    summary = summary_text(results, verdicts)
    report = run_dir / "report.html"
    write_bytes(run_dir / "summary.txt", (summary + "\n").encode("utf-8"), durable=False)
    write_bytes(report, page.encode("utf-8"), durable=False)
    return report


# The `labelsmooth report` command --------------------------------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", type=Path, help="a run directory (with results.json)")


def run(args) -> int:
    """Rebuild the report of ``args.run_dir`` and print its summary."""
    try:
        report = build_report(args.run_dir)
    except ValueError as error:
        print(f"labelsmooth report: error: {error}", file=sys.stderr)
        return 2
    print((report.parent / "summary.txt").read_text(encoding="utf-8"), end="")
    print(f"Report: {report}")
    return 0
