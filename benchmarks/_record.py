"""Shared helper for benchmark scripts: long-format CSV rows under benchmarks/results/.

Each row: name, provider, size, dtype, metric, value, git_sha, hardware, date. Rows are appended,
so one file keeps the history of every run; a run is identified by its git sha and date.
"""

from __future__ import annotations

import csv
import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FIELDS = ["name", "provider", "size", "dtype", "metric", "value", "git_sha", "hardware", "date"]


def git_sha() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       cwd=Path(__file__).parent, stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})"


class Recorder:
    """Collects rows for one script run and appends them to results/<script>.csv."""

    def __init__(self, script: str) -> None:
        self.path = RESULTS_DIR / f"{script}.csv"
        self.sha, self.hardware = git_sha(), hardware()
        self.date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.rows: list[dict] = []

    def add(self, name: str, provider: str, size: str, dtype: str, metric: str, value: float) -> None:
        self.rows.append(dict(name=name, provider=provider, size=size, dtype=dtype, metric=metric,
                              value=f"{value:.6g}", git_sha=self.sha, hardware=self.hardware,
                              date=self.date))

    def save(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                writer.writeheader()
            writer.writerows(self.rows)
        return self.path
