"""The report of a lab run: one self-contained report.html, PNG figures, summary.txt, verdicts.

- :mod:`~labelsmooth.lab.report.builder`: ``build_report(run_dir)`` and ``labelsmooth report``;
- :mod:`~labelsmooth.lab.report.html`: escaping, tables and embedded PNG figures;
- the sections: :mod:`~labelsmooth.lab.report.overview` (configuration, final metrics,
  over-fitting, curves, and the verdict rule), :mod:`~labelsmooth.lab.report.calibration`,
  :mod:`~labelsmooth.lab.report.penultimate` and :mod:`~labelsmooth.lab.report.distillation`.

Submodules load on import (``from labelsmooth.lab.report.builder import build_report``); this
package imports nothing.
"""
