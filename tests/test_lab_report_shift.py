"""The `shift` preset and the report's distribution-shift section: a tiny end-to-end run on digits
whose verdicts follow the one rule; one cell's numbers recomputed independently (torch.rot90 for
the 90-degree rotation, a float64 log-softmax, torchmetrics' ECE, scikit-learn's ROC AUC); the gain
verdict's arithmetic and precondition on constructed numbers; a data set without a pixel scale
refused; the Fashion-MNIST quick run (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torchmetrics.functional.classification import multiclass_calibration_error

from labelsmooth.cli import main as cli_main
from labelsmooth.lab import presets
from labelsmooth.lab.data import DEFAULT_FASHION_MNIST_DIR, load_run_dataset
from labelsmooth.lab.report import shift
from labelsmooth.lab.report.builder import build_report, sections_for
from labelsmooth.lab.report.context import ReportContext
from labelsmooth.lab.report.penultimate import load_cell_model
from labelsmooth.lab.report.verdicts import rule

TINY = ["--dataset", "digits", "--train-fraction", "1", "--epochs", "2", "--seeds", "0", "1",
        "--held-out-classes", "8", "9", "--no-progress", "--threads", "1"]
CLAIMS = {"calibration-under-shift", "beats-temperature-scaling-under-shift", "ood-detection"}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("shift") / "run"
    assert cli_main(["reproduce", "shift", "--quick", *TINY, "--out", str(out)]) == 0
    return out


def test_the_preset_trains_without_two_classes_for_three_eps_and_seeds():
    for quick in (False, True):
        settings = presets.preset_settings("shift", quick=quick)
        assert settings["held_out_classes"] == [6, 8] and settings["label_smoothing"] == [0.0, 0.1, 0.3]
        assert settings["seeds"] == [0, 1, 2] and settings["dataset"] == "fashion-mnist"
    assert presets.preset_settings("shift", quick=True)["epochs"] < presets.preset_settings("shift")["epochs"]


def test_only_a_shift_run_has_the_shift_section():
    assert shift.section in sections_for({"config": {"preset": "shift"}})
    assert shift.section not in sections_for({"config": {"preset": "overfitting"}})
    assert shift.section not in sections_for({"config": {}})


def check_shift_verdicts(run_dir, n_seeds: int) -> list[dict]:
    """The run's shift verdicts: every claim with one primary, each verdict the rule's on its interval."""
    records = json.loads((run_dir / "verdicts.json").read_text())
    mine = [r for r in records if r["section"] == "distribution shift"]
    assert {r["claim"] for r in mine} == CLAIMS
    primary = [r for r in mine if r["primary"]]
    assert sorted(r["claim"] for r in primary) == sorted(CLAIMS)  # one primary per claim
    for record in mine:
        assert record["source"] and record["n_seeds"] == n_seeds and record["scope"]
        if record["verdict"] == "not applicable":
            assert record["reason"].startswith("not applicable: ")
            continue
        sign = (1 if record["better"] == "higher" else -1) * (1 if record["predicts"] == "improvement" else -1)
        effect = sorted((sign * record["low"], sign * record["high"]))
        assert (record["verdict"], record["wording"]) == rule(*effect, record["margin"], record["n_seeds"],
                                                              record["predicts"])
    return mine


def test_end_to_end_on_digits_writes_shift_verdicts_that_follow_the_rule(digits_run):
    check_shift_verdicts(digits_run, 2)
    assert "Lee &amp; Cheon 2020" in (digits_run / "report.html").read_text()
    assert (digits_run / "shift_curves.png").stat().st_size > 0


def test_the_report_is_deterministic(digits_run):
    before = (digits_run / "verdicts.json").read_text()
    build_report(digits_run)
    assert (digits_run / "verdicts.json").read_text() == before


def test_one_cells_numbers_match_independent_references(digits_run):
    context = ReportContext(json.loads((digits_run / "results.json").read_text()), digits_run)
    data = shift.shift_data(context.config)
    run = context.results["runs"][0]
    model = load_cell_model(digits_run, run, context.config, data.dataset)
    temperature = context.cell(run).temperature
    found = shift.cell_scores(model, data, temperature)

    # the 90-degree rotation: each image turned a quarter either way, the sign drawn as documented
    dataset = load_run_dataset(context.config)
    pixels = (dataset.x_test.double() * dataset.std + dataset.mean) / dataset.pixel_max
    signs = torch.randint(0, 2, (len(pixels),), generator=torch.Generator().manual_seed(shift.SHIFT_SEED)) * 2 - 1
    turned = torch.stack([torch.rot90(p, int(k), dims=(-2, -1)) for p, k in zip(pixels, signs)])
    inputs = ((turned * dataset.pixel_max - dataset.mean) / dataset.std).float()
    with torch.inference_mode():
        logits = model(inputs).double()
    target = dataset.y_test
    for variant, scale in (("as trained", 1.0), ("temperature-scaled", temperature)):
        got = found["shift"][variant][("rotation", 90.0)]
        z = logits / scale
        assert got["accuracy"] == pytest.approx(float((z.argmax(1) == target).double().mean()), abs=1e-12)
        assert got["nll"] == pytest.approx(float(-z.log_softmax(1)[torch.arange(len(z)), target].mean()), rel=1e-6)
        expected_ece = multiclass_calibration_error(z.softmax(1), target, num_classes=z.shape[1], n_bins=15)
        assert got["ece"] == pytest.approx(float(expected_ece), abs=1e-5)

    # detection: scikit-learn's ROC AUC of the max softmax, known test images as positives
    with torch.inference_mode():
        known = model(dataset.x_test).double().softmax(1).amax(1)
        unknown = model(data.unknown).double().softmax(1).amax(1)
    expected = roc_auc_score(np.r_[np.ones(len(known)), np.zeros(len(unknown))], np.r_[known, unknown])
    assert found["auroc"]["as trained"]["max_softmax"] == pytest.approx(expected, abs=1e-9)
    assert sorted(data.unknown_names) == [8, 9] and len(data.unknown) == int(torch.isin(
        load_run_dataset(context.config, full=True).y_test, torch.tensor([8, 9])).sum())


def scores_with_ece(ece: dict) -> dict:
    """A cell's numbers as cell_scores returns them, with only ECE: {(variant, kind, strength): ece}."""
    found = {"shift": {}, "auroc": {}}
    for (variant, kind, strength), value in ece.items():
        found["shift"].setdefault(variant, {})[(kind, strength)] = {"ece": value}
    return found


def test_the_gain_is_the_baselines_ece_minus_the_treated_and_needs_a_gain_without_shift(digits_run):
    context = ReportContext(json.loads((digits_run / "results.json").read_text()), digits_run)
    strongest = shift.SHIFT_STRENGTHS["rotation"][-1]
    base = {s: scores_with_ece({("as trained", "rotation", 0.0): 0.10 + s / 100,
                                ("as trained", "rotation", strongest): 0.40}) for s in range(3)}
    shrinks = {s: scores_with_ece({("as trained", "rotation", 0.0): 0.05,
                                   ("as trained", "rotation", strongest): 0.39 + s / 1000}) for s in range(3)}
    record = shift._gain_verdict(context, base, shrinks, "eps=0.3 vs eps=0", "as trained", "rotation", True)
    gains_without = [0.05 + s / 100 for s in range(3)]
    gains_under = [0.01 - s / 1000 for s in range(3)]
    assert record["baseline_mean"] == pytest.approx(np.mean(gains_without))
    assert record["treated_mean"] == pytest.approx(np.mean(gains_under))
    assert record["verdict"] == "supported"  # the gain shrank by ~0.05, well past the 0.01 that matters
    no_gain = {s: scores_with_ece({("as trained", "rotation", 0.0): 0.12 + s / 100,
                                   ("as trained", "rotation", strongest): 0.2}) for s in range(3)}
    record = shift._gain_verdict(context, base, no_gain, "eps=0.3 vs eps=0", "as trained", "rotation", True)
    assert record["verdict"] == "not applicable" and "no calibration gain to shrink" in record["reason"]


def test_a_data_set_without_a_pixel_scale_is_refused_by_name(tmp_path):
    path = tmp_path / "images.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.random((60, 6, 6)).astype(np.float32), y=np.arange(60) % 3)
    with pytest.raises(ValueError, match=r"shifts are defined on images of known pixel scale .* got data set"):
        shift.shift_data({"dataset": str(path)})


@pytest.mark.slow
def test_quick_preset_on_fashion_mnist(tmp_path):
    if not (DEFAULT_FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not installed at {DEFAULT_FASHION_MNIST_DIR} (apt-get install "
                    "dataset-fashion-mnist)")
    out = tmp_path / "run"
    argv = ["reproduce", "shift", "--quick", "--epochs", "1", "--seeds", "0", "1", "--train-fraction", "0.05",
            "--no-progress", "--out", str(out)]
    assert cli_main(argv) == 0
    check_shift_verdicts(out, 2)
    page = (out / "report.html").read_text()
    assert "Unknown classes: Shirt, Bag" in page and "2,000 test images" in page and "8,000 unshifted" in page
