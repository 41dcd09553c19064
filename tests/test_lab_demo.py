"""lab.demo: ``labelsmooth demo`` falls back to digits with a notice when Fashion-MNIST is absent,
says what it trains and where the report goes before training, prints a line per epoch when its
output is not a terminal, and a complete demo run is left as it is."""

from __future__ import annotations

import dataclasses
import json

import pytest

from labelsmooth.cli import main as cli_main
from labelsmooth.lab import presets


@pytest.mark.slow
def test_demo_falls_back_to_digits_with_a_notice(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("LABELSMOOTH_DATA", str(empty))
    monkeypatch.chdir(tmp_path)
    short = dataclasses.replace(presets.PRESETS["seed-fashion-mnist"],
                                quick=dict(epochs=2, seeds=[0, 1]))
    monkeypatch.setitem(presets.PRESETS, "seed-fashion-mnist", short)
    assert cli_main(["demo", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "NOTICE: Fashion-MNIST is not available" in printed and str(empty) in printed
    run_dir = tmp_path / "runs" / "demo-seed-fashion-mnist-digits"
    # before training: what it trains and where the report goes; then (no terminal) a line per epoch
    lines = printed.splitlines()
    plan = lines.index("Training seed-cnn on digits (all of its training images), eps 0, 0.05, 0.1 x seeds 0, 1, "
                       "2 epochs each.")
    assert lines[plan + 1] == f"The report will be {run_dir.relative_to(tmp_path) / 'report.html'}."
    epochs = [i for i, line in enumerate(lines) if line.startswith(("1/2 epochs", "2/2 epochs"))]
    assert len(epochs) == 2 and plan < epochs[0]
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["dataset"], config["train_fraction"], config["epochs"]) == ("digits", 1.0, 2)
    assert f"Report: {run_dir / 'report.html'}" in printed and "accuracy" in printed

    assert cli_main(["demo"]) == 0  # a complete demo run: exit 0, point to the report
    again = capsys.readouterr().out
    assert "already complete" in again and str(run_dir / "report.html") in again
