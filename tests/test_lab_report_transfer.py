"""lab.report.transfer: the transfer-and-representation section on a tiny digits sweep with classes
held out of training. References are independent: NC1 by the float64 formula with SciPy's
pseudo-inverse (conftest), probes by scikit-learn's LogisticRegression on the features recomputed
here from the same splits; a probe split missing a held-out class is refused (by the section's data
and by the sweep before training); `labelsmooth reproduce transfer --quick` end to end on digits,
and on Fashion-MNIST (slow)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from labelsmooth.analysis.representation import DEFAULT_L2_GRID
from labelsmooth.cli import main as cli_main
from labelsmooth.lab import sweep
from labelsmooth.lab.config import SweepConfig
from labelsmooth.lab.data import DEFAULT_FASHION_MNIST_DIR, load_dataset
from labelsmooth.lab.models import build_model
from labelsmooth.lab.report import transfer
from labelsmooth.lab.report.context import ReportContext
from labelsmooth.lab.rundir import load_results

HELD_OUT = (5, 6, 7, 8, 9)
# an MLP trained on digits 0-4, two seeds at eps 0 and 0.3 (a few seconds on one thread)
CONFIG = SweepConfig(dataset="digits", models=("mlp",), model_options={"mlp": {"widths": [32, 32]}},
                     label_smoothing=(0.0, 0.3), seeds=(0, 1), epochs=3, batch_size=64, optimizer="adam",
                     lr=0.01, train_fraction=0.4, held_out_classes=HELD_OUT)
SPLITS = {"train": "train", "validation": "holdout", "test": "test"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sweep_without_report):
    """The sweep's run directory (its report not built: the tests build the section)."""
    return sweep_without_report(CONFIG, tmp_path_factory.mktemp("transfer") / "run")


def reference_probe(features: dict, l2_grid) -> float:
    """Test accuracy of scikit-learn's L2 logistic regression on standardised features, its C chosen on
    validation (ties to the larger penalty) over ``l2_grid``; C = 1 / (n l2) is the same objective."""
    x, standardised = features["train"][0], {}
    mean, std = x.mean(0), x.std(0)
    std[std == 0] = 1
    standardised = {split: ((h - mean) / std, labels) for split, (h, labels) in features.items()}
    fits = {l2: LogisticRegression(C=1 / (len(x) * l2), tol=1e-10, max_iter=10_000).fit(*standardised["train"])
            for l2 in l2_grid}
    accuracy = {l2: fit.score(*standardised["validation"]) for l2, fit in fits.items()}
    best = max(accuracy, key=lambda l2: (accuracy[l2], l2))
    return fits[best].score(*standardised["test"])


def model_of(run_dir: Path, seed: int, eps: str = "0"):
    model = build_model("mlp", 5, (1, 8, 8), widths=[32, 32])
    model.load_state_dict(torch.load(run_dir / "cells" / f"mlp-uniform-eps{eps}-seed{seed}" / "model.pt",
                                     weights_only=True))
    return model.eval()


def features_of(model, dataset, rows=None) -> dict:
    found = {}
    for split, attr in SPLITS.items():
        x, y = getattr(dataset, f"x_{attr}"), getattr(dataset, f"y_{attr}").numpy()
        keep = np.isin(y, rows) if rows is not None else np.ones(len(y), bool)
        with torch.no_grad():
            h = model.penultimate(x[torch.from_numpy(keep)]).double().numpy()
        found[split] = (h, y[keep])
    return found


def test_cell_measures_match_numpy_and_scikit_learn(trained, monkeypatch, class_collapse_reference):
    monkeypatch.setattr(transfer, "PROBE_ITERATIONS", 1000)  # converged probes: the same solution as sklearn's
    trained_data = load_dataset("digits", train_fraction=0.4, held_out_classes=HELD_OUT)
    full = load_dataset("digits", train_fraction=0.4)
    model = model_of(trained, 0)
    grid = DEFAULT_L2_GRID[-3:]  # the larger penalties: quicker to converge, for both solvers
    cell = transfer.cell_representation(model, transfer.split_samples(trained_data),
                                        transfer.held_out_splits(full, HELD_OUT), l2_grid=grid)
    # every split of digits is below MAX_POINTS, so the sample is the whole split
    own = features_of(model, trained_data)
    for split, (h, y) in own.items():
        assert cell.nc1[split] == pytest.approx(class_collapse_reference(h, y)[0], rel=1e-9)
    assert cell.probe_accuracy == pytest.approx(reference_probe(own, grid), abs=1e-12)
    other = features_of(model, full, HELD_OUT)
    assert cell.transfer_accuracy == pytest.approx(reference_probe(other, grid), abs=1e-12)
    assert cell.held_out_nc1 == pytest.approx(class_collapse_reference(*other["validation"])[0], rel=1e-9)


def test_section_judges_kornblith_claims_on_the_stated_splits(trained, class_collapse_reference):
    output = transfer.section(ReportContext(load_results(trained), trained))
    found = {(v["claim"], v["quantity"], v["split"]): v for v in output.verdicts}
    assert sorted(found) == [
        ("class-collapse", "NC1, held-out classes", "validation"),
        ("class-collapse", "NC1, trained classes", "train"),
        ("class-collapse", "NC1, trained classes", "validation"),
        ("probe-trained-task", "probe accuracy, trained classes", "test"),
        ("transfer", "probe accuracy, held-out classes", "test")]
    primary = {key for key, v in found.items() if v["primary"]}
    assert primary == {("class-collapse", "NC1, trained classes", "validation"),
                       ("probe-trained-task", "probe accuracy, trained classes", "test"),
                       ("transfer", "probe accuracy, held-out classes", "test")}
    assert all("Kornblith" in v["source"] and v["contrast"] == "eps=0.3 vs eps=0" and v["n_seeds"] == 2
               for v in output.verdicts)
    assert found[("transfer", "probe accuracy, held-out classes", "test")]["predicts"] == "deterioration"
    # the verdict's numbers are the NC1 of the features, recomputed here
    trained_data = load_dataset("digits", train_fraction=0.4, held_out_classes=HELD_OUT)
    for eps, key in (("0", "baseline_mean"), ("0.3", "treated_mean")):
        values = [class_collapse_reference(*features_of(model_of(trained, seed, eps), trained_data)["validation"])[0]
                  for seed in (0, 1)]
        assert found[("class-collapse", "NC1, trained classes", "validation")][key] == pytest.approx(
            np.mean(values), rel=1e-9)
    assert "Sandal" not in output.html and "Held out of training and probed: 5, 6, 7, 8, 9" in output.html
    assert "NC1 (train)" in output.html and "NC1 (validation)" in output.html and "NC1 (test)" in output.html


def test_section_without_held_out_classes_has_no_transfer_verdict(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "build_report", lambda run_dir: None)
    config = dataclasses.replace(CONFIG, held_out_classes=(), epochs=1, train_fraction=0.2)
    sweep.run_sweep(config, tmp_path / "run", progress=False)
    output = transfer.section(ReportContext(load_results(tmp_path / "run"), tmp_path / "run"))
    assert {v["claim"] for v in output.verdicts} == {"class-collapse", "probe-trained-task"}
    assert "held no classes out of training" in output.html


def test_a_probe_split_missing_a_held_out_class_is_refused():
    full = load_dataset("digits", train_fraction=0.4)
    keep = full.y_holdout != 9
    lacking = dataclasses.replace(full, x_holdout=full.x_holdout[keep], y_holdout=full.y_holdout[keep])
    with pytest.raises(ValueError, match=r"the probe validation split has no example of class 9 \(9\)"):
        transfer.held_out_splits(lacking, HELD_OUT)


def test_sweep_refuses_held_out_classes_a_probe_split_lacks_before_training(tmp_path):
    digits = load_dataset("digits")
    arrays = {"x": digits.x_train.numpy(), "y": digits.y_train.numpy(), "x_test": digits.x_test.numpy(),
              "y_test": digits.y_test.numpy()}
    keep = digits.y_holdout.numpy() != 8
    arrays.update(x_val=digits.x_holdout.numpy()[keep], y_val=digits.y_holdout.numpy()[keep])
    np.savez(tmp_path / "data.npz", **arrays)
    config = dataclasses.replace(CONFIG, dataset=str(tmp_path / "data.npz"), train_fraction=1.0)
    with pytest.raises(ValueError, match="the probe validation split has no example of class 8"):
        sweep.run_sweep(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def reproduce_transfer(out: Path, extra: list[str]) -> list[dict]:
    assert cli_main(["reproduce", "transfer", "--quick", "--no-progress", "--threads", "1", "--out", str(out),
                     *extra]) == 0
    stored = json.loads((out / "config.json").read_text())
    assert stored["preset"] == "transfer" and stored["held_out_classes"] == list(HELD_OUT)
    return [v for v in json.loads((out / "verdicts.json").read_text()) if v["section"] == "transfer and representation"]


def test_reproduce_transfer_quick_on_digits(tmp_path, capsys):
    verdicts = reproduce_transfer(tmp_path / "run", ["--dataset", "digits", "--train-fraction", "1", "--epochs", "2",
                                                     "--seeds", "0", "1", "--model", "mlp", "--mlp-widths", "32"])
    assert {(v["claim"], v["contrast"]) for v in verdicts if v["primary"]} == {
        ("transfer", "eps=0.3 vs eps=0"), ("probe-trained-task", "eps=0.3 vs eps=0"),
        ("class-collapse", "eps=0.3 vs eps=0")}
    assert "Smoothed features transfer worse" in capsys.readouterr().out  # a primary verdict in the summary


@pytest.mark.slow
@pytest.mark.skipif(not DEFAULT_FASHION_MNIST_DIR.is_dir(),
                    reason=f"Fashion-MNIST is not installed at {DEFAULT_FASHION_MNIST_DIR}")
def test_reproduce_transfer_quick_on_fashion_mnist(tmp_path):
    verdicts = reproduce_transfer(tmp_path / "run", [])
    assert {v["contrast"] for v in verdicts} == {"eps=0.1 vs eps=0", "eps=0.3 vs eps=0"}
    assert all(v["n_seeds"] == 3 for v in verdicts)
