"""``labelsmooth calibrate``: the table it prints, the diagram it writes, one-line errors for bad files."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

from labelsmooth.cli import main


def over_confident_split(n: int, seed: int, k: int = 4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * 2
    target = torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)
    return (logits * 3).float().numpy(), target.numpy()


@pytest.fixture
def files(tmp_path):
    test_logits, test_target = over_confident_split(1500, seed=0)
    val_logits, val_target = over_confident_split(1500, seed=1)
    np.savez(tmp_path / "test.npz", logits=test_logits, target=test_target)
    np.savez(tmp_path / "val.npz", logits=val_logits, target=val_target)
    return tmp_path


def row(output: str, title: str) -> list[float]:
    line = next(line for line in output.splitlines() if line.startswith(title))
    return [float(x) for x in re.findall(r"-?\d+\.\d+", line[len(title):])]


@pytest.mark.slow
def test_scores_and_temperature_scales(files, capsys):
    assert main(["calibrate", str(files / "test.npz"), "--fit-on", str(files / "val.npz"),
                 "--out", str(files / "out"), "--n-resamples", "20"]) == 0
    output = capsys.readouterr().out
    data = np.load(files / "test.npz")
    logits, target = torch.from_numpy(data["logits"]).double(), torch.from_numpy(data["target"])
    ece_before, _, _, ece_after, _, _ = row(output, "ECE")
    expected = multiclass_calibration_error(logits.softmax(1), target, 4, n_bins=15).item()
    assert ece_before == pytest.approx(expected, abs=1e-4)
    temperature = float(re.search(r"T = ([0-9.]+)", output).group(1))
    assert temperature == pytest.approx(3.0, abs=0.3)
    nll_before, _, _, nll_after, _, _ = row(output, "NLL")
    assert nll_before == pytest.approx(F.cross_entropy(logits, target).item(), abs=1e-4)
    assert nll_after == pytest.approx(F.cross_entropy(logits / temperature, target).item(), abs=2e-4)
    assert ece_after < 0.5 * ece_before
    png = (files / "out" / "reliability.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_without_fit_on_prints_one_column_and_writes_nothing(files, capsys):
    assert main(["calibrate", str(files / "test.npz"), "--n-bins", "10", "--n-resamples", "5"]) == 0
    output = capsys.readouterr().out
    assert len(row(output, "ECE")) == 3 and "10 equal-width bins" in output
    assert not (files / "out").exists()


@pytest.mark.slow
def test_other_calibrator(files, capsys):
    assert main(["calibrate", str(files / "test.npz"), "--fit-on", str(files / "val.npz"),
                 "--method", "isotonic", "--n-resamples", "5"]) == 0
    assert "after isotonic calibration" in capsys.readouterr().out


def _save(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("make_file,message", [
    (lambda d: d / "missing.npz", "no such file"),
    (lambda d: _save(d / "a.npz", logits=np.zeros((3, 2), np.float32)), "missing \\['target'\\]"),
    (lambda d: _save(d / "a.npz", logits=np.zeros((3, 2), np.float32), target=np.zeros(4, np.int64)),
     "target must have shape \\(3,\\)"),
    (lambda d: _save(d / "a.npz", logits=np.full((3, 2), np.nan, np.float32), target=np.zeros(3, np.int64)),
     "finite logits"),
    (lambda d: _save(d / "a.npz", logits=np.zeros((3, 2), np.float32), target=np.array([0, 1, 2])),
     "class indices in \\[0, 2\\), got 2"),
    (lambda d: _save(d / "a.npz", logits=np.zeros((3, 2), np.float32), target=np.zeros(3, np.float32)),
     "integer tensor"),
    (lambda d: _save(d / "a.npz", logits=np.zeros(3, np.float32), target=np.zeros(3, np.int64)),
     "shape \\(N, K\\)"),
    (lambda d: _save(d / "a.npz", logits=np.array([None, 1], dtype=object), target=np.zeros(2, np.int64)),
     "Object arrays cannot be loaded when allow_pickle=False"),
    (lambda d: (d / "a.npz").write_bytes(b"PK\x03\x04 not really a zip") and d / "a.npz", "not a readable"),
])
def test_bad_files_give_one_line_errors(tmp_path, capsys, make_file, message):
    path = make_file(tmp_path)
    assert main(["calibrate", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    error = captured.err.strip()
    assert "\n" not in error and error.startswith(f"labelsmooth calibrate: error: {path}: ")
    assert re.search(message, error), error


def test_fit_on_file_with_other_classes(files, tmp_path, capsys):
    np.savez(tmp_path / "three.npz", logits=np.zeros((5, 3), np.float32), target=np.zeros(5, np.int64))
    assert main(["calibrate", str(files / "test.npz"), "--fit-on", str(tmp_path / "three.npz")]) == 2
    assert "3 classes" in capsys.readouterr().err


def test_bad_numbers(files, capsys):
    assert main(["calibrate", str(files / "test.npz"), "--n-bins", "0"]) == 2
    assert "--n-bins" in capsys.readouterr().err
