"""lab.report.calibration, .decisive and .selective: cell_calibration against independent formulas,
and the sections on synthetic run directories (final.npz per cell as in the lab contract): their
tables, figures and verdicts (against scipy's paired t interval and the preconditions)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from sklearn.metrics import roc_auc_score
from torchmetrics.functional.classification import multiclass_calibration_error

from labelsmooth.calibration.scaling import TemperatureScaling
from labelsmooth.lab.report import decisive, selective
from labelsmooth.lab.report.builder import build_report
from labelsmooth.lab.report.calibration import cell_calibration, section
from labelsmooth.lab.report.context import ReportContext, prediction_metrics
from labelsmooth.lab.report.verdicts import FIELDS, VERDICTS
from labelsmooth.lab.rundir import load_results

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_same_interval(record: dict, expected) -> None:
    """The record's interval equals scipy's: the same centre, and the same half-width to 2e-5
    relative (the lab's Student-t quantile is a table to 4 decimals: 4.3027 for 2 degrees of freedom)."""
    assert (record["low"] + record["high"]) / 2 == pytest.approx((expected.low + expected.high) / 2, abs=1e-12)
    assert (record["high"] - record["low"]) / 2 == pytest.approx((expected.high - expected.low) / 2, rel=2e-5)


def true_logits(n: int, k: int, seed: int):
    """Logits and labels drawn from their softmax (calibrated by construction)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * 2
    return logits, torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)


def cell_arrays(scale: float, seed: int, n_test: int = 1500, n_holdout: int = 1500, k: int = 5,
                early_scale: float | None = None) -> dict:
    """A cell whose model outputs ``scale * true logits`` (> 1 over-, < 1 under-confident); its
    early-stopped weights output ``early_scale * true logits``."""
    logits, target = true_logits(n_test + n_holdout, k, seed)
    arrays = {"test_logits": (logits * scale).float().numpy()[:n_test], "test_target": target[:n_test].numpy(),
              "holdout_logits": (logits * scale).float().numpy()[n_test:], "holdout_target": target[n_test:].numpy(),
              "train_logits": (logits * scale).float().numpy()[:10], "train_target": target[:10].numpy()}
    if early_scale is not None:
        arrays["early_test_logits"] = (logits * early_scale).float().numpy()[:n_test]
    return arrays


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
    config = {"dataset": "synthetic", "model": model, "validation_split": "holdout"}
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "results.json").write_text(json.dumps({"config": config, "runs": runs, "complete": True}))
    return directory


# cell_calibration ------------------------------------------------------------------------------


@pytest.mark.slow
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


# the calibration section -----------------------------------------------------------------------


def context_of(run_dir: Path) -> ReportContext:
    return ReportContext(load_results(run_dir), run_dir)


@pytest.mark.slow
def test_section_table_diagrams_and_an_over_confident_baseline(tmp_path):
    cells = {(0.0, seed): cell_arrays(2.5, seed) for seed in range(3)}
    cells.update({(0.1, seed): cell_arrays(0.4, 10 + seed) for seed in range(3)})
    run_dir = write_run_dir(tmp_path / "run", cells)
    output = section(context_of(run_dir), n_resamples=20)
    fragment, verdicts = output.html, output.verdicts

    verdict, = verdicts
    assert set(FIELDS) <= set(verdict) and verdict["verdict"] in VERDICTS
    assert (verdict["claim"], verdict["contrast"], verdict["split"]) == ("calibration", "eps=0.1 vs eps=0", "test")
    raw_ece = {eps: [cell_calibration(cells[(eps, s)], n_resamples=5)["raw"]["ece"]["estimate"] for s in range(3)]
               for eps in (0.0, 0.1)}
    expected = stats.ttest_rel(raw_ece[0.1], raw_ece[0.0]).confidence_interval(0.95)
    assert_same_interval(verdict, expected)
    assert "under-confident" in fragment  # the 0.4-scaled model

    assert "(1500 test rows, 1500 validation rows per cell)" in fragment
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


@pytest.mark.slow
def test_the_claim_is_not_applicable_when_the_baseline_is_not_over_confident(tmp_path):
    cells = {(0.0, seed): cell_arrays(0.7, seed) for seed in range(3)}   # under-confident baseline
    cells.update({(0.1, seed): cell_arrays(1.0, 10 + seed) for seed in range(3)})
    verdict, = section(context_of(write_run_dir(tmp_path / "run", cells)), n_resamples=5).verdicts
    assert verdict["verdict"] == "not applicable" and "not over-confident" in verdict["reason"]


@pytest.mark.slow
def test_one_seed_is_inconclusive(tmp_path):
    run_dir = write_run_dir(tmp_path / "run", {(0.0, 0): cell_arrays(2.5, 0), (0.1, 0): cell_arrays(1.0, 1)})
    verdict, = section(context_of(run_dir), n_resamples=5).verdicts
    assert verdict["verdict"] == "inconclusive" and verdict["n_seeds"] == 1


@pytest.mark.slow
def test_section_uses_stored_calibration_and_escapes_names(tmp_path):
    cells = {(0.0, 0): cell_arrays(2.0, 0), (0.1, 0): cell_arrays(1.0, 1)}
    run_dir = write_run_dir(tmp_path / "run", cells, model="<script>alert(1)</script>")
    results = load_results(run_dir)
    for run in results["runs"]:
        run["calibration"] = cell_calibration(run_dir / "cells" / run["cell"] / "final.npz", n_resamples=10)
        run["calibration"]["raw"]["ece"]["estimate"] = 0.123456  # marks the stored numbers
        (run_dir / "cells" / run["cell"] / "final.npz").unlink()
    results["runs"].append(dict(results["runs"][0], model="other", cell="../../outside"))
    fragment = section(ReportContext(results, run_dir)).html
    assert fragment.count("0.1235") == 3  # two stored cells, and the copy under model "other"
    assert "<script>" not in fragment and "&lt;script&gt;" in fragment
    assert not (run_dir / "calibration_reliability.png").exists()  # no final.npz left to draw


def test_section_without_finished_cells(tmp_path):
    output = section(context_of(write_run_dir(tmp_path / "run", {})))
    assert "nothing to score" in output.html and output.verdicts == []


@pytest.mark.slow
def test_build_report_with_the_calibration_section(tmp_path):
    run_dir = write_run_dir(tmp_path / "run", {(0.0, 0): cell_arrays(2.0, 0, n_test=300, n_holdout=300),
                                               (0.05, 0): cell_arrays(1.0, 1, n_test=300, n_holdout=300)})
    page = build_report(run_dir, sections=[section]).read_text()
    assert "label smoothing or temperature scaling?" in page
    assert "http://" not in page and "https://" not in page


# the decisive comparisons -------------------------------------------------------------------------


def reference_nll(logits: np.ndarray, target: np.ndarray, temperature: float = 1.0) -> float:
    z = torch.from_numpy(logits).double() / temperature
    return float(F.cross_entropy(z, torch.from_numpy(target)))


@pytest.mark.slow
def test_decisive_comparisons_against_temperature_scaling_and_early_stopping(tmp_path):
    """eps=0 over-confident (2.5x the true logits; its early-stopped weights 1x, calibrated): temperature
    scaling and early stopping both fix it; the smoothed model (0.6x, under-confident) is worse on NLL."""
    cells = {(0.0, seed): cell_arrays(2.5, seed, early_scale=1.0) for seed in range(3)}
    cells.update({(0.1, seed): cell_arrays(0.6, seed, early_scale=0.6) for seed in range(3)})
    run_dir = write_run_dir(tmp_path / "run", cells)
    output = decisive.section(context_of(run_dir))
    found = {(v["claim"], v["quantity"], v["contrast"]): v for v in output.verdicts}
    # (a) smoothed as trained vs eps=0 temperature-scaled, on NLL: recomputed here
    scaled = [reference_nll(cells[(0.0, s)]["test_logits"], cells[(0.0, s)]["test_target"],
                            TemperatureScaling().fit(torch.from_numpy(cells[(0.0, s)]["holdout_logits"]).double(),
                                                     torch.from_numpy(cells[(0.0, s)]["holdout_target"])).temperature)
              for s in range(3)]
    smoothed = [reference_nll(cells[(0.1, s)]["test_logits"], cells[(0.1, s)]["test_target"]) for s in range(3)]
    interval = stats.ttest_rel(smoothed, scaled).confidence_interval(0.95)
    a = found[("beats-temperature-scaling", "test NLL", "eps=0.1 as trained vs eps=0 temperature-scaled")]
    assert_same_interval(a, interval)
    assert a["primary"] and (a["verdict"], a["wording"]) == ("not supported", "worse")
    b = found[("beats-early-stopping", "test NLL", "eps=0.1 as trained vs eps=0 early-stopped")]
    early = [reference_nll(cells[(0.0, s)]["early_test_logits"], cells[(0.0, s)]["test_target"]) for s in range(3)]
    assert b["mean"] == pytest.approx(np.mean(np.subtract(smoothed, early)), abs=1e-9)
    assert b["verdict"] == "not supported"
    assert {v["claim"] for v in output.verdicts} == {"beats-temperature-scaling", "beats-early-stopping",
                                                     "helps-after-temperature-scaling"}
    assert sum(v["primary"] for v in output.verdicts) == 3  # one per claim: NLL, the largest eps


@pytest.mark.slow
def test_decisive_comparisons_without_early_stopped_weights_are_not_applicable(tmp_path):
    cells = {(eps, seed): cell_arrays(2.0, seed + 10 * int(eps * 10)) for eps in (0.0, 0.1) for seed in range(2)}
    output = decisive.section(context_of(write_run_dir(tmp_path / "run", cells)))
    early = [v for v in output.verdicts if v["claim"] == "beats-early-stopping"]
    assert [v["verdict"] for v in early] == ["not applicable"] and early[0]["low"] is None


# selective classification ------------------------------------------------------------------------


@pytest.mark.slow
def test_selective_section_scores_every_cell_as_scikit_learn_does(tmp_path):
    cells = {(eps, seed): cell_arrays(1.5 if eps == 0 else 0.5, seed + 10 * int(eps * 10)) for eps in (0.0, 0.1)
             for seed in range(3)}
    run_dir = write_run_dir(tmp_path / "run", cells)
    output = selective.section(context_of(run_dir))
    primary, = [v for v in output.verdicts if v["primary"]]
    assert primary["claim"] == "selective" and primary["quantity"].startswith("test AUROC")

    def auroc(arrays):
        probs = torch.from_numpy(arrays["test_logits"]).double().softmax(1)
        confidence, prediction = probs.max(1)
        return roc_auc_score((prediction.numpy() == arrays["test_target"]), confidence.numpy())

    treated = [auroc(cells[(0.1, s)]) for s in range(3)]
    baseline = [auroc(cells[(0.0, s)]) for s in range(3)]
    interval = stats.ttest_rel(treated, baseline).confidence_interval(0.95)
    assert_same_interval(primary, interval)
    assert (run_dir / "selective_risk_coverage.png").read_bytes()[:8] == PNG_SIGNATURE
    assert len(output.verdicts) == 8  # 4 metrics, as trained and temperature-scaled


def test_prediction_metrics_against_torch_and_torchmetrics():
    """The accuracy, NLL and ECE the report compares models on: torch's cross-entropy, the arg-max
    hit rate and torchmetrics' 15-bin ECE, on float64 logits."""
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(500, 7, generator=g, dtype=torch.float64)
    target = torch.randint(0, 7, (500,), generator=g)
    got = prediction_metrics(logits, target)
    assert got["nll"] == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-12)
    assert got["accuracy"] == pytest.approx((logits.argmax(1) == target).double().mean().item(), abs=0)
    want_ece = multiclass_calibration_error(logits.softmax(1), target, num_classes=7, n_bins=15, norm="l1")
    assert got["ece"] == pytest.approx(want_ece.item(), abs=1e-6)
