"""lab.adversarial and the report's adversarial section (`labelsmooth reproduce adversarial`):
settings refused by name, the pixel conversion against the data's stored values, the evaluation
on a tiny digits run checked against the run's own test logits, its resume and a report rebuild
that reads the stored numbers, and the section's verdicts and plain conclusion.

The attacks themselves (FGSM's closed form on linear models, PGD inside the budget box, the
transfer control on a model without a useful gradient) are tested in test_analysis_robustness.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from labelsmooth.cli import main as cli_main
from labelsmooth.lab import presets
from labelsmooth.lab.adversarial import (
    ADVERSARIAL_FILE,
    AdversarialSettings,
    attack_subset,
    evaluate_run,
    pixels_of,
    source_cell,
)
from labelsmooth.lab.data import DEFAULT_FASHION_MNIST_DIR, load_dataset
from labelsmooth.lab.report.adversarial import conclusion
from labelsmooth.lab.report.builder import build_report

TINY = ["--dataset", "digits", "--train-fraction", "1", "--epochs", "2", "--seeds", "0", "1", "2",
        "--no-progress", "--threads", "1"]


# 1. Settings and helpers ------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(attacks=("pgd", "deepfool")), "attacks must be distinct names from"),
    (dict(budgets=(0.1, 0.0)), "budget must be a finite number > 0"),
    (dict(budgets=(-0.05,)), "budget must be a finite number > 0"),
    (dict(budgets=(float("nan"),)), "budget must be a finite number > 0"),
    (dict(budgets=()), "budgets must be distinct"),
    (dict(budgets=(0.1, 0.1)), "budgets must be distinct"),
    (dict(images=0), "images must be an integer >= 1"),
    (dict(steps=0), "steps must be an integer >= 1"),
    (dict(subset_seed=-1), "subset_seed must be a non-negative integer"),
])
def test_bad_settings_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdversarialSettings(**kwargs)


def test_pixels_are_the_stored_values_over_a_white_pixel_and_map_back_to_the_model_input():
    from sklearn.datasets import load_digits

    dataset = load_dataset("digits")
    pixels, to_model = pixels_of(dataset, dataset.x_test)
    assert pixels.min() >= 0 and pixels.max() <= 1
    # digits store 0..16 per pixel: every pixel is a multiple of 1/16, and the test split's values
    # are those of scikit-learn's images
    stored = (pixels.double() * 16).numpy()
    np.testing.assert_allclose(stored, np.round(stored), atol=1e-4)
    assert sorted(np.unique(np.round(stored))) == sorted(np.unique(load_digits().images))
    torch.testing.assert_close(to_model(pixels), dataset.x_test, atol=1e-5, rtol=0)


def test_pixels_need_the_value_of_a_white_pixel():
    import dataclasses

    dataset = dataclasses.replace(load_dataset("digits"), pixel_max=None)
    with pytest.raises(ValueError, match="pixel_max"):
        pixels_of(dataset, dataset.x_test)


def test_the_test_subset_is_a_seeded_sorted_sample_without_repeats():
    subset = attack_subset(360, 100, seed=3)
    assert len(set(subset.tolist())) == 100 and subset.tolist() == sorted(subset.tolist())
    assert 0 <= subset.min() and subset.max() < 360
    assert torch.equal(subset, attack_subset(360, 100, seed=3)) and not torch.equal(subset, attack_subset(360, 100, 4))


def test_the_transfer_source_is_the_eps0_model_of_the_largest_seed_and_needs_two_seeds():
    runs = [{"label_smoothing": e, "seed": s, "cell": f"e{e}s{s}"} for e in (0.0, 0.1) for s in (0, 1, 5)]
    assert source_cell({"runs": runs})["cell"] == "e0.0s5"
    with pytest.raises(ValueError, match="at least 2 seeds"):
        source_cell({"runs": [r for r in runs if r["seed"] == 0]})


# 2. The evaluation and the section on a tiny digits run -----------------------------------------


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adversarial") / "run"
    assert cli_main(["reproduce", "adversarial", "--quick", *TINY, "--out", str(out)]) == 0
    return out


def test_reproduce_adversarial_on_digits_evaluates_every_model_but_the_transfer_source(digits_run):
    stored = json.loads((digits_run / ADVERSARIAL_FILE).read_text())
    results = json.loads((digits_run / "results.json").read_text())
    assert stored["complete"] and stored["source"]["seed"] == 2
    assert stored["settings"]["budgets"] == [0.05, 0.1, 0.2] and stored["settings"]["steps"] == 20
    evaluated = {r["cell"] for r in results["runs"] if r["seed"] != 2}
    assert set(stored["robust"]) == set(stored["clean"]) == evaluated  # the source's seed is not attacked
    for cell in evaluated:
        assert set(stored["robust"][cell]) == set(stored["settings"]["attacks"])
        assert all(set(by_budget) == {"0.05", "0.1", "0.2"} for by_budget in stored["robust"][cell].values())


def test_clean_accuracy_on_the_subset_matches_the_runs_own_test_logits(digits_run):
    # independent of the pixel conversion: the sweep's stored test logits, read at the subset's indices
    stored = json.loads((digits_run / ADVERSARIAL_FILE).read_text())
    subset = attack_subset(360, stored["settings"]["images"], stored["settings"]["subset_seed"]).numpy()
    for cell, accuracy in stored["clean"].items():
        with np.load(digits_run / "cells" / cell / "final.npz") as arrays:
            logits, target = arrays["test_logits"][subset], arrays["test_target"][subset]
        assert accuracy == pytest.approx(float((logits.argmax(1) == target).mean()), abs=1e-12)


def test_pgd_is_at_least_as_strong_as_fgsm_and_white_box_at_least_as_strong_as_transfer(digits_run):
    stored = json.loads((digits_run / ADVERSARIAL_FILE).read_text())
    pgd = np.array([[r["pgd"][b] for b in ("0.05", "0.1", "0.2")] for r in stored["robust"].values()])
    fgsm = np.array([[r["fgsm"][b] for b in ("0.05", "0.1", "0.2")] for r in stored["robust"].values()])
    transfer = np.array([[r["transfer-pgd"][b] for b in ("0.05", "0.1", "0.2")] for r in stored["robust"].values()])
    clean = np.array(list(stored["clean"].values()))
    assert (pgd.mean() <= fgsm.mean()) and (pgd.mean() <= transfer.mean()) and (transfer.mean() <= clean.mean())
    assert (np.diff(pgd, axis=1) <= 0.01).all()  # a larger budget never helps the defender (up to noise)


def test_the_report_has_the_four_claims_with_their_sources_and_one_primary_each(digits_run):
    records = [r for r in json.loads((digits_run / "verdicts.json").read_text())
               if r["section"] == "adversarial robustness"]
    claims = {r["claim"] for r in records}
    assert claims == {"adversarial-white-box", "adversarial-transfer", "adversarial-margin-loss", "gradient-masking"}
    for claim in claims:
        primary = [r for r in records if r["claim"] == claim and r["primary"]]
        assert len(primary) == 1 and primary[0]["contrast"] == "eps=0.3 vs eps=0"
        assert "budget 0.05" in primary[0]["quantity"] and primary[0]["n_seeds"] == 2
    assert all("Goibert" in r["source"] or "Fu" in r["source"] for r in records)
    page = (digits_run / "report.html").read_text()
    assert "Adversarial robustness" in page and "transfer PGD-20" in page


def test_a_rebuilt_report_reads_the_stored_numbers_and_an_interrupted_evaluation_resumes(digits_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(digits_run, run)
    stored = json.loads((run / ADVERSARIAL_FILE).read_text())
    cell = sorted(stored["robust"])[0]
    # a rebuild reads adversarial.json: a changed number shows, nothing is recomputed
    changed = json.loads(json.dumps(stored))
    changed["robust"][cell]["pgd"]["0.1"] = 0.123456
    (run / ADVERSARIAL_FILE).write_text(json.dumps(changed))
    build_report(run)
    assert json.loads((run / ADVERSARIAL_FILE).read_text()) == changed
    # interrupted after all but one model: resuming evaluates that one again, to the same numbers
    partial = json.loads(json.dumps(stored))
    del partial["robust"][cell], partial["clean"][cell]
    partial["complete"] = False
    (run / ADVERSARIAL_FILE).write_text(json.dumps(partial))
    said = []
    assert evaluate_run(run, say=said.append) == stored
    assert len(said) == 1 and cell in said[0]
    with pytest.raises(ValueError, match="remove it to evaluate again"):
        evaluate_run(run, AdversarialSettings(images=7))


def test_the_conclusion_says_whether_the_white_box_gain_survives_each_control():
    def records(white, transfer, margin):
        return [{"claim": c, "primary": True, "verdict": v} for c, v in (
            ("adversarial-white-box", white), ("adversarial-transfer", transfer), ("adversarial-margin-loss", margin))]

    assert "survives both controls" in conclusion(records("supported", "supported", "supported"))
    lost = conclusion(records("supported", "not supported", "supported"))
    assert "does not survive the transfer attack" in lost and "gradient masking" in lost
    assert "survives PGD on the margin loss" in lost
    assert "cannot tell for the transfer attack (inconclusive)" in conclusion(
        records("supported", "inconclusive", "not supported"))
    assert "no white-box robustness gain" in conclusion(records("inconclusive", "supported", "supported"))


@pytest.mark.parametrize("flags, message", [(["--seeds", "0"], "seeds must be at least 2"),
                                            (["--label-smoothing", "0.1", "0.2"], "label_smoothing must include 0")])
def test_the_preset_refuses_a_grid_without_a_transfer_source_before_training(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert cli_main(["reproduce", "adversarial", "--quick", *TINY, *flags, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(not (DEFAULT_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason=f"Fashion-MNIST is not installed in {DEFAULT_FASHION_MNIST_DIR}")
def test_reproduce_adversarial_quick_on_fashion_mnist_one_epoch(tmp_path):
    out = tmp_path / "run"
    assert cli_main(["reproduce", "adversarial", "--quick", "--epochs", "1", "--no-progress", "--out", str(out)]) == 0
    stored = json.loads((out / ADVERSARIAL_FILE).read_text())
    assert stored["complete"] and stored["images"] == 500 and len(stored["robust"]) == 9
    assert presets.preset_settings("adversarial", quick=True)["label_smoothing"] == [0.0, 0.1, 0.3]
