"""lab.report.calibration: cell_calibration against independent formulas, and the report section on
synthetic run directories (final.npz per cell as in the lab contract)."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

from labelsmooth.lab.report.builder import build_report
from labelsmooth.lab.report.calibration import GAP_TOLERANCE, cell_calibration, report_section
from labelsmooth.lab.report.overview import VERDICT_KEYS, VERDICTS
from labelsmooth.lab.rundir import load_results

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def true_logits(n: int, k: int, seed: int):
    """Logits and labels drawn from their softmax (calibrated by construction)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * 2
    return logits, torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)


def cell_arrays(scale: float, seed: int, n_test: int = 1500, n_holdout: int = 1500, k: int = 5) -> dict:
    """A cell whose model outputs ``scale * true logits`` (> 1 over-, < 1 under-confident)."""
    logits, target = true_logits(n_test + n_holdout, k, seed)
    logits = (logits * scale).float().numpy()
    return {"test_logits": logits[:n_test], "test_target": target[:n_test].numpy(),
            "holdout_logits": logits[n_test:], "holdout_target": target[n_test:].numpy(),
            "train_logits": logits[:10], "train_target": target[:10].numpy()}


def write_run_dir(directory: Path, cells: dict[tuple[float, int], dict], model: str = "seed-cnn") -> Path:
    """runs/NAME with config.json, results.json and cells/<key>/final.npz per (eps, seed)."""
    directory.mkdir(parents=True)
    runs = []
    for (eps, seed), arrays in cells.items():
        key = f"eps{eps}-seed{seed}"
        (directory / "cells" / key).mkdir(parents=True)
        np.savez(directory / "cells" / key / "final.npz", **arrays)
        runs.append(dict(label_smoothing=eps, seed=seed, distribution="uniform", model=model, cell=key,
                         history=[], test={"accuracy": 0.5, "ece": 0.1, "nll": 1.0, "loss": 1.0}))
    config = {"dataset": "synthetic", "model": model}
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "results.json").write_text(json.dumps({"config": config, "runs": runs, "complete": True}))
    return directory


# cell_calibration ------------------------------------------------------------------------------


def test_cell_calibration_against_independent_formulas(tmp_path):
    arrays = cell_arrays(scale=2.5, seed=0, n_test=4000, n_holdout=8000)
    np.savez(tmp_path / "final.npz", **arrays)
    result = cell_calibration(tmp_path / "final.npz", n_resamples=40)
    test_logits = torch.from_numpy(arrays["test_logits"]).double()
    test_target = torch.from_numpy(arrays["test_target"])
    probs = test_logits.softmax(1)
    raw = result["raw"]
    assert (result["n_test"], result["n_holdout"]) == (4000, 8000)
    assert raw["ece"]["estimate"] == pytest.approx(
        multiclass_calibration_error(probs, test_target, 5, n_bins=15).item(), abs=1e-6)
    assert raw["mce"]["estimate"] == pytest.approx(
        multiclass_calibration_error(probs, test_target, 5, n_bins=15, norm="max").item(), abs=1e-6)
    assert raw["nll"]["estimate"] == pytest.approx(F.cross_entropy(test_logits, test_target).item(), rel=1e-6)
    assert raw["accuracy"]["estimate"] == pytest.approx((probs.argmax(1) == test_target).double().mean().item())
    assert result["temperature"] == pytest.approx(2.5, abs=0.1)
    scaled = result["scaled"]
    temperature = result["temperature"]
    assert scaled["nll"]["estimate"] == pytest.approx(
        F.cross_entropy(test_logits / temperature, test_target).item(), rel=1e-5)
    assert scaled["ece"]["estimate"] < 0.5 * raw["ece"]["estimate"]
    assert raw["confidence_gap"]["low"] > 0  # over-confident
    for variant in (raw, scaled):
        for name, ci in variant.items():
            assert ci["low"] < ci["high"]
            if name not in ("ece", "mce", "classwise_ece"):  # means: inside their percentile interval
                assert ci["low"] <= ci["estimate"] <= ci["high"]
    assert json.loads(json.dumps(result)) == result  # plain JSON for results.json
    assert cell_calibration(arrays, n_resamples=40) == result  # path and arrays agree


def test_cell_calibration_without_holdout_skips_scaling():
    arrays = cell_arrays(scale=1.0, seed=1)
    del arrays["holdout_logits"], arrays["holdout_target"]
    result = cell_calibration(arrays, n_resamples=10)
    assert result["temperature"] is None and result["scaled"] is None and result["n_holdout"] == 0


@pytest.mark.parametrize("change,match", [
    (lambda a: a.pop("test_target"), "expected arrays 'test_logits' and 'test_target'"),
    (lambda a: a.update(test_target=a["test_target"][:10]),
     "test_logits / test_target in .*target must have shape"),
    (lambda a: a.update(holdout_target=a["holdout_target"] + 5), "holdout_target.*class indices in \\[0, 5\\)"),
    (lambda a: a.update(holdout_logits=a["holdout_logits"][:, :3]),
     "holdout_logits must have shape \\(N, 5\\)"),
    (lambda a: a["test_logits"].__setitem__((0, 0), np.nan), "finite logits"),
])
def test_cell_calibration_bad_arrays(change, match):
    arrays = cell_arrays(scale=1.0, seed=2, n_test=50, n_holdout=50)
    change(arrays)
    with pytest.raises(ValueError, match=match):
        cell_calibration(arrays, n_resamples=5)


def test_cell_calibration_missing_file(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        cell_calibration(tmp_path / "nope.npz")


# report_section --------------------------------------------------------------------------------


def _verdicts_by(verdicts: list[dict], word: str) -> list[dict]:
    return [v for v in verdicts if word in v["statement"]]


def test_report_section_flags_under_confidence_and_prefers_temperature_scaling(tmp_path):
    cells = {(0.0, seed): cell_arrays(2.5, seed) for seed in range(3)}
    cells.update({(0.1, seed): cell_arrays(0.4, 10 + seed) for seed in range(3)})
    run_dir = write_run_dir(tmp_path / "run", cells)
    results = load_results(run_dir)
    fragment, verdicts = report_section(results, run_dir, n_resamples=20)

    for verdict in verdicts:
        assert set(VERDICT_KEYS) <= set(verdict) and verdict["verdict"] in VERDICTS
    under = _verdicts_by(verdicts, "under-confident")
    assert [v["scope"] for v in under] == ["eps=0.1"]
    assert under[0]["verdict"] == "not supported" and "UNDER-CONFIDENT" in under[0]["evidence"]
    beats = _verdicts_by(verdicts, "better than temperature scaling")
    assert beats[0]["verdict"] == "not supported" and beats[0]["scope"] == "eps=0.1 vs eps=0"

    assert "(1500 test rows, 1500 holdout rows per cell)" in fragment
    # Table: each condition at T = 1 and after scaling, with the fitted temperatures.
    rows = re.findall(r"<tr>(.*?)</tr>", fragment)[1:]  # after the header
    assert len(rows) == 4
    assert "<td>eps=0</td><td>3</td><td>1 (none)</td>" in rows[0]
    fitted = re.search(r"<td>fitted: ([0-9.]+) \[", rows[1])
    assert float(fitted.group(1)) == pytest.approx(2.5, abs=0.2)
    fitted = re.search(r"<td>fitted: ([0-9.]+) \[", rows[3])
    assert float(fitted.group(1)) == pytest.approx(0.4, abs=0.05)

    # Diagrams: written as PNG files and embedded as data URIs.
    for name in ("calibration_reliability.png", "calibration_reliability_scaled.png"):
        data = (run_dir / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 10_000
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', fragment)
    assert len(embedded) == 2 and base64.b64decode(embedded[0])[:8] == PNG_SIGNATURE


def test_report_section_supports_a_calibrated_smoothed_model(tmp_path):
    """One seed: a model whose confidence is exactly 0.8 and that is right on exactly 80% of rows."""
    n = 10000
    logits = np.tile(np.array([[math.log(4.0), 0.0]], dtype=np.float32), (n, 1))
    target = np.zeros(n, dtype=np.int64)
    target[: n // 5] = 1
    calibrated = {"test_logits": logits, "test_target": target,
                  "holdout_logits": logits[:2000], "holdout_target": target[::5]}
    run_dir = write_run_dir(tmp_path / "run", {(0.0, 0): cell_arrays(2.5, 0, k=2), (0.1, 0): calibrated})
    _, verdicts = report_section(load_results(run_dir), run_dir, n_resamples=50)
    under = _verdicts_by(verdicts, "under-confident")[0]
    assert under["verdict"] == "supported", under["evidence"]
    assert f"+-{GAP_TOLERANCE}" in under["evidence"]
    assert "bootstrap interval over test rows" in under["evidence"]
    # One seed: comparisons over training runs have no interval.
    assert _verdicts_by(verdicts, "better than temperature scaling")[0]["verdict"] == "inconclusive"


def test_report_section_uses_stored_calibration_and_escapes_names(tmp_path):
    cells = {(0.0, 0): cell_arrays(2.0, 0), (0.1, 0): cell_arrays(1.0, 1)}
    run_dir = write_run_dir(tmp_path / "run", cells, model="<script>alert(1)</script>")
    results = load_results(run_dir)
    for run in results["runs"]:
        run["calibration"] = cell_calibration(run_dir / "cells" / run["cell"] / "final.npz", n_resamples=10)
        run["calibration"]["raw"]["ece"]["estimate"] = 0.123456  # marks the stored numbers
        (run_dir / "cells" / run["cell"] / "final.npz").unlink()
    results["runs"].append(dict(results["runs"][0], model="other", cell="../../outside"))
    fragment, _ = report_section(results, run_dir)
    assert fragment.count("0.1235") == 3  # two stored cells, and the copy under model "other"
    assert "<script>" not in fragment and "&lt;script&gt;" in fragment
    assert not (run_dir / "calibration_reliability.png").exists()  # no final.npz left to draw


def test_report_section_without_finished_cells(tmp_path):
    run_dir = write_run_dir(tmp_path / "run", {})
    fragment, verdicts = report_section(load_results(run_dir), run_dir)
    assert "nothing to score" in fragment and verdicts == []


def test_build_report_with_the_calibration_section(tmp_path):
    run_dir = write_run_dir(tmp_path / "run", {(0.0, 0): cell_arrays(2.0, 0, n_test=300, n_holdout=300),
                                               (0.05, 0): cell_arrays(1.0, 1, n_test=300, n_holdout=300)})
    page = build_report(run_dir, sections=[report_section]).read_text()
    assert "label smoothing or temperature scaling?" in page
    assert "http://" not in page and "https://" not in page
