"""The report of a lab run: ``build_report(run_dir)`` and the ``labelsmooth report`` command.

``build_report`` reads ``results.json`` (and ``config.json``), runs the report's sections
(:mod:`labelsmooth.lab.report.context`: each ``section(context) -> SectionOutput``) and writes
into the run directory, each file atomically, in this order:

- ``verdicts.json``: every section's verdict records (:mod:`labelsmooth.lab.report.verdicts`);
- ``summary.txt``: the plain-language summary (:mod:`labelsmooth.lab.report.summary`), the final
  test metrics and the primary verdicts: what the commands print;
- ``report.html``: one page that loads nothing from the network (images are ``data:`` URIs,
  every user string is escaped): the summary, a table of contents, the sections with their
  verdicts rendered from the same records (embedded too, as ``application/json``), the claims
  with their sources, and the run's provenance and configuration;
- the sections' figures as PNG files.

A sweep's report has the :data:`SWEEP_SECTIONS`; a distillation run's (its config names
``teacher_widths``) the :data:`DISTILLATION_SECTIONS` (a preset's sweep adds its
:data:`PRESET_SECTIONS`, such as the adversarial evaluation), so ``labelsmooth report`` rebuilds either
kind of run directory. A new section is one module with a ``section(context)`` function, added
to the tuple here; a section that does not apply to a run returns None and is left out.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from ..provenance import provenance
from ..rundir import load_results, write_bytes, write_json
from . import (
    adversarial,
    calibration,
    decisive,
    distillation,
    label_noise,
    overview,
    penultimate,
    selective,
    shift,
    transfer,
)
from .context import ReportContext, SectionOutput
from .html import escape, table
from .summary import metrics_lines, plain_summary
from .verdicts import check_record, verdict_table

__all__ = ["DISTILLATION_SECTIONS", "PRESET_SECTIONS", "SWEEP_SECTIONS", "add_arguments", "build_report", "run",
           "sections_for"]

Section = Callable[[ReportContext], "SectionOutput | None"]

SWEEP_SECTIONS: tuple[Section, ...] = (
    overview.final_metrics_section,
    overview.overfitting_section,
    overview.curves_section,
    label_noise.section,
    calibration.section,
    decisive.section,
    selective.section,
    penultimate.section,
    transfer.section,
)
DISTILLATION_SECTIONS: tuple[Section, ...] = (
    distillation.distillation_section,
    distillation.teacher_penultimate_section,
)
# sections only the report of a preset's run has (they evaluate the trained models again, which
# costs minutes): preset name -> its sections, after the sweep's
PRESET_SECTIONS: dict[str, tuple[Section, ...]] = {"adversarial": (adversarial.section,), "shift": (shift.section,)}


def sections_for(results: dict) -> tuple[Section, ...]:
    """The sections of a run's report: a distillation run's, or a sweep's (with its preset's own)."""
    config = results.get("config") or {}
    if distillation.is_distillation(config):
        return DISTILLATION_SECTIONS
    return SWEEP_SECTIONS + PRESET_SECTIONS.get(config.get("preset"), ())


_STYLE = """body{font-family:system-ui,sans-serif;max-width:80rem;margin:1.5rem auto;padding:0 1rem;color:#222;
line-height:1.45}h1{margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;display:block;overflow-x:auto;max-width:100%}
td,th{border:1px solid #ccc;padding:.25rem .5rem;font-size:.85rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}.figures{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,26rem),1fr));
gap:1rem 1.5rem;align-items:start;margin:1rem 0}.figures figure.wide{grid-column:1/-1}figure{margin:0}
img{max-width:100%;height:auto;display:block}figcaption{font-size:.85rem;color:#555;margin-top:.25rem}
.summary{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:.5rem 1.2rem}
.summary li{margin:.35rem 0}.legacy{background:#fff4e5;border:1px solid #f0b35a;padding:.5rem 1rem}
nav ol{columns:2;font-size:.95rem}details{margin:.5rem 0 1rem}summary{cursor:pointer;color:#0b57d0}
.supported{color:#1a7f37}.not-supported{color:#b3261e}.inconclusive{color:#8a6d00}.not-applicable{color:#555}
code{background:#f3f3f3;padding:0 .2rem}"""


def _anchor(index: int, title: str) -> str:
    return f"s{index}-" + re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40]


def _claims_html(records: list[dict]) -> str:
    claims: dict[str, dict] = {}
    for record in records:
        claims.setdefault(record["claim"], record)
    items = "".join(f"<li><b>{escape(r['title'])}.</b> {escape(r['statement'])} Source: {escape(r['source'])}.</li>"
                    for r in claims.values())
    return f'<ul class="claims">{items}</ul>' if items else "<p>No claim was tested on this run.</p>"


PROVENANCE_ROWS = (("labelsmooth", "labelsmooth version"), ("git", "git commit"), ("torch", "torch version"),
                   ("python", "Python"), ("platform", "platform"), ("cpu", "CPU"), ("threads", "CPU threads"),
                   ("gpu", "GPU"), ("date", "date"), ("wall_seconds", "wall time (s)"))


def _provenance_html(results: dict, built: dict) -> str:
    trained = results.get("provenance") or {}
    def shown(record: dict, key: str) -> str:
        value = record.get(key)
        return "none" if value is None and key in record else "-" if value is None else str(value)

    rows = [[label, shown(trained, key) if trained else "not recorded", shown(built, key)]
            for key, label in PROVENANCE_ROWS]
    note = "" if trained else ("<p>This run did not record where it was trained (it predates provenance "
                               "records, or it is a distillation run whose sweeps hold them).</p>")
    return note + table(["", "training (from results.json)", "this report"], rows)


def _config_html(config: dict) -> str:
    rows = [[key, value if isinstance(value, str) else json.dumps(value)] for key, value in config.items()]
    return table(["setting", "value"], rows)


def _page(run_dir: Path, results: dict, context: ReportContext, outputs: list[SectionOutput], records: list[dict],
          summary: list[str], built: dict) -> str:
    status = "complete" if results.get("complete") else "not complete (partial results)"
    anchors = [_anchor(i, output.title) for i, output in enumerate(outputs, start=1)]
    toc = "".join(f'<li><a href="#{a}">{escape(o.title)}</a></li>' for a, o in zip(anchors, outputs))
    toc += ('<li><a href="#claims">Claims tested and their sources</a></li>'
            '<li><a href="#provenance">Provenance and configuration</a></li>')
    sections, offset = [], 0
    for anchor, output in zip(anchors, outputs):
        own = records[offset:offset + len(output.verdicts)]
        offset += len(output.verdicts)
        verdicts = f"<h3>Verdicts</h3>{verdict_table(own)}" if own else ""
        sections.append(f'<section id="{anchor}"><h2>{escape(output.title)}</h2>{output.html}{verdicts}</section>')
    legacy = ('<p class="legacy"><b>Recorded before the lab kept a validation split.</b> The per-epoch metrics '
              "of this run came from the test split; verdicts that would be chosen on them are not applicable. "
              "Rerun it for those verdicts.</p>" if context.legacy else "")
    data = json.dumps(records).replace("<", "\\u003c")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>labelsmooth report: {escape(run_dir.name)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>Label smoothing lab: {escape(run_dir.name)}</h1>"
            f"<p>Run directory <code>{escape(run_dir.resolve())}</code>, {escape(status)}, "
            f"{len(results['runs'])} cells; report built {escape(built['date'])}.</p>{legacy}"
            f'<h2 id="found">What was found</h2><div class="summary"><ul>'
            + "".join(f"<li>{escape(line)}</li>" for line in summary)
            + "</ul><p>Verdicts: <i>supported</i> when the 95% interval of the paired effect excludes 0 and reaches "
            "the smallest effect that matters; <i>not supported</i> when it lies below that effect; "
            "<i>inconclusive</i> otherwise (always with one seed); <i>not applicable</i> when a precondition "
            "fails. Primary contrast: the largest eps against eps=0; other rows are secondary and not corrected "
            "for multiplicity. Every verdict is in verdicts.json.</p></div>"
            f"<nav><h2>Contents</h2><ol>{toc}</ol></nav>" + "".join(sections)
            + f'<section id="claims"><h2>Claims tested and their sources</h2>{_claims_html(records)}</section>'
            + f'<section id="provenance"><h2>Provenance and configuration</h2>{_provenance_html(results, built)}'
            + f"{_config_html(results.get('config') or {})}</section>"
            + f'<script type="application/json" id="verdicts-data">{data}</script></body></html>')


def _summary_text(summary: list[str], context: ReportContext, records: list[dict]) -> str:
    lines = ["Summary:"] + [f"  {line}" for line in summary] + metrics_lines(context)
    primary = [r for r in records if r["primary"]]
    lines.append(f"Primary verdicts ({len(primary)} of {len(records)}; report.html and verdicts.json hold all, "
                 "with each claim's source):")
    lines += [f"  {r['title']} ({r['contrast']}, {r['quantity']}, {r['split']}): {r['verdict'].upper()}"
              for r in primary] or ["  none"]
    return "\n".join(lines)


def build_report(run_dir: str | os.PathLike, *, sections: Sequence[Section] | None = None) -> Path:
    """Write verdicts.json, summary.txt, report.html and the figures of a run directory; return
    report.html's path. ``sections`` default to :func:`sections_for` the run.

    >>> import json, tempfile, pathlib
    >>> run = pathlib.Path(tempfile.mkdtemp())
    >>> history = [{"epoch": e, "val_nll": 1 / e} for e in (1, 2)]
    >>> runs = [{"label_smoothing": 0.0, "seed": 0, "history": history, "test": {"nll": 0.5}}]
    >>> _ = (run / "results.json").write_text(json.dumps({"config": {}, "runs": runs}))
    >>> build_report(run).name
    'report.html'
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    context = ReportContext(results, run_dir)
    outputs = []
    for section in sections_for(results) if sections is None else sections:
        output = section(context)
        if output is None:  # a section that does not apply to this run (label noise in a clean sweep)
            continue
        where = f"report section {section.__module__}.{section.__qualname__}"
        outputs.append(SectionOutput(output.title, output.html, [check_record(r, where) for r in output.verdicts]))
    # the records as verdicts.json holds them: the page and the summary are rendered from these
    records = json.loads(json.dumps([r for output in outputs for r in output.verdicts]))
    summary = plain_summary(records, context)
    built = {**provenance(), "wall_seconds": None}
    write_json(run_dir / "verdicts.json", records, durable=False)
    write_bytes(run_dir / "summary.txt", (_summary_text(summary, context, records) + "\n").encode("utf-8"),
                durable=False)
    built["wall_seconds"] = round(time.perf_counter() - started, 1)
    page = _page(run_dir, results, context, outputs, records, summary, built)
    report = run_dir / "report.html"
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
