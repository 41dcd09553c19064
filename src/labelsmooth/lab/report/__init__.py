"""The report of a lab run: one self-contained report.html, verdicts.json, PNG figures, summary.txt.

- :mod:`~labelsmooth.lab.report.builder`: ``build_report(run_dir)`` and ``labelsmooth report``;
- :mod:`~labelsmooth.lab.report.context`: what a section reads (``ReportContext``) and returns
  (``SectionOutput``): a new section is one module with a ``section(context)`` function;
- :mod:`~labelsmooth.lab.report.verdicts`: the one verdict rule and the records of verdicts.json;
- :mod:`~labelsmooth.lab.report.summary`: the plain-language summary at the top;
- :mod:`~labelsmooth.lab.report.html`: escaping, tables and embedded PNG figures;
- the sections: :mod:`~labelsmooth.lab.report.overview` (final test metrics, over-fitting,
  curves), :mod:`~labelsmooth.lab.report.calibration`, :mod:`~labelsmooth.lab.report.decisive`
  (smoothing against temperature scaling and early stopping),
  :mod:`~labelsmooth.lab.report.selective`, :mod:`~labelsmooth.lab.report.penultimate` and
  :mod:`~labelsmooth.lab.report.distillation`.

Submodules load on import (``from labelsmooth.lab.report.builder import build_report``); this
package imports nothing.
"""
