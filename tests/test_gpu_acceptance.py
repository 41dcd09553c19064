"""The one-shot GPU acceptance script keeps working without a GPU: its dry run (every step at tiny
sizes on CPU through Triton's interpreter) passes, writes long-format CSV rows and a log to $OUT,
and prints the summary table last. (The figures themselves are timings: not checked here.)"""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_dry_run_runs_every_step(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_acceptance.sh"), "--dry-run"], env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    steps = [line.split("\t") for line in (tmp_path / "steps.tsv").read_text().splitlines()]
    assert [name for name, _, _ in steps] == ["versions", "triton-tests", "exact", "big", "linear",
                                              "vocab-parallel", "timing", "linear-timing", "lab", "sweep"]
    assert all(status == "ok" for _, status, _ in steps), steps
    rows = list(csv.DictReader(open(tmp_path / "gpu_acceptance.csv")))
    assert set(rows[0]) == {"name", "provider", "size", "dtype", "metric", "value", "git_sha", "hardware", "date"}
    passed = {(r["name"], r["provider"]): r["value"] for r in rows if r["metric"] == "passed"}
    assert passed[("exact", "all")] == "1" and passed[("vocab-parallel", "gloo")] == "1"
    assert (tmp_path / "gpu_acceptance.log").stat().st_size > 0
    assert "| step | status | seconds |" in result.stdout.split("=== sweep")[-1]
