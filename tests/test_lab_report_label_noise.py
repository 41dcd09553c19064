"""lab.report.label_noise and the label-noise preset: the section's verdicts on constructed runs,
against paired differences and Student-t intervals computed here with scipy; which contrasts are
primary; no section for a clean sweep; the fraction of flipped labels a model fits, from a
hand-made run directory; `reproduce label-noise` end to end on digits (Fashion-MNIST: marked
slow), its refusals, its resume after an interruption, and its record of the flipped labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from labelsmooth.cli import main as cli_main
from labelsmooth.lab import presets, sweep
from labelsmooth.lab.cells import CellGroup
from labelsmooth.lab.data import load_dataset
from labelsmooth.lab.noise import flip_labels
from labelsmooth.lab.report import label_noise
from labelsmooth.lab.report.context import ReportContext

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def results(accuracy: dict[tuple[float, float], list[float]], nll: dict | None = None) -> dict:
    """A finished sweep's results.json: (noise rate, eps) -> per-seed clean test accuracy (and NLL)."""
    runs = []
    for (rate, eps), values in accuracy.items():
        for seed, value in enumerate(values):
            test = {"accuracy": value, "nll": (nll or {}).get((rate, eps), [1.0] * len(values))[seed]}
            runs.append(dict(model="mlp", distribution="uniform", label_smoothing=eps, label_noise=rate, seed=seed,
                             cell=f"mlp-uniform-eps{eps:g}-noise{rate:g}-seed{seed}", history=[], test=test,
                             early_stopped={"epoch": 1, "validation_nll": 1.0, "test": test}))
    return {"config": {"dataset": "digits", "models": ["mlp"], "epochs": 3, "label_noise": sorted({r for r, _ in
                                                                                                  accuracy}),
                       "noise_kind": "symmetric", "validation_split": "holdout"},
            "runs": runs, "complete": True}


def by_contrast(found: list[dict], claim: str, quantity: str = "clean test accuracy") -> dict[str, dict]:
    return {v["contrast"]: v for v in found if v["claim"] == claim and v["quantity"] == quantity}


def expected_interval(treated: list[float], baseline: list[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval of the paired differences (scipy, independent of the lab's stats)."""
    difference = np.subtract(treated, baseline)
    mean, sem = difference.mean(), stats.sem(difference)
    low, high = stats.t.interval(0.95, len(difference) - 1, loc=mean, scale=sem)
    return mean, low, high


def test_verdicts_per_noise_rate_follow_the_rule_with_scipy_intervals(tmp_path):
    base = [0.60, 0.62, 0.61]
    accuracy = {
        (0.0, 0.0): [0.80, 0.81, 0.82], (0.0, 0.3): [0.81, 0.80, 0.83], (0.0, -0.2): [0.79, 0.80, 0.81],
        (0.6, 0.0): base,
        (0.6, 0.3): [0.70, 0.73, 0.71],      # differences 0.10, 0.11, 0.10: supported
        (0.6, -0.2): [0.60, 0.64, 0.60],     # vs eps=0.3: -0.10, -0.09, -0.11: worse
    }
    found = label_noise.section(ReportContext(results(accuracy), tmp_path)).verdicts
    lukasik = by_contrast(found, "label-noise")
    assert set(lukasik) == {"eps=0.3 vs eps=0 at noise rate 0.6"}  # r = 0 is not a label-noise contrast
    record = lukasik["eps=0.3 vs eps=0 at noise rate 0.6"]
    mean, low, high = expected_interval(accuracy[0.6, 0.3], base)
    assert (record["mean"], record["low"], record["high"]) == pytest.approx((mean, low, high), abs=1e-6)
    # (the lab series-expands the t quantile: 1e-6)
    assert low > 0 and high >= 0.005 and record["verdict"] == "supported" and record["primary"]
    assert record["split"] == "test" and record["source"].startswith("Lukasik")

    wei = by_contrast(found, "negative-smoothing")
    assert set(wei) == {"eps=-0.2 vs eps=0.3 at noise rate 0.6", "eps=-0.2 vs eps=0 at noise rate 0.6"}
    against_positive = wei["eps=-0.2 vs eps=0.3 at noise rate 0.6"]
    mean, low, high = expected_interval(accuracy[0.6, -0.2], accuracy[0.6, 0.3])
    assert high < 0 and (against_positive["verdict"], against_positive["wording"]) == ("not supported", "worse")
    assert against_positive["mean"] == pytest.approx(mean, abs=1e-9) and against_positive["primary"]
    assert against_positive["source"].startswith("Wei")
    against_none = wei["eps=-0.2 vs eps=0 at noise rate 0.6"]
    mean, low, high = expected_interval(accuracy[0.6, -0.2], base)
    assert low < 0 < 0.005 < high and against_none["verdict"] == "inconclusive" and not against_none["primary"]


def test_nll_verdict_uses_one_percent_of_the_baseline_nll_and_primaries_sit_at_the_highest_rate(tmp_path):
    accuracy = {(r, e): [0.7, 0.71, 0.72] for r in (0.0, 0.2, 0.4) for e in (-0.2, 0.0, 0.1, 0.3)}
    nll = {(r, e): [1.0, 1.02, 0.98] for r in (0.0, 0.2, 0.4) for e in (-0.2, 0.0, 0.1, 0.3)}
    nll[0.2, 0.1] = [0.995, 1.015, 0.975]   # lower by 0.005 each: real, below 1% of 1.0 -> negligible
    nll[0.4, 0.3] = [0.90, 0.93, 0.87]      # lower by 0.10, 0.09, 0.11 -> supported
    found = label_noise.section(ReportContext(results(accuracy, nll), tmp_path)).verdicts
    lukasik_nll = by_contrast(found, "label-noise", "clean test NLL")
    assert lukasik_nll["eps=0.1 vs eps=0 at noise rate 0.2"]["margin"] == pytest.approx(0.01)
    assert (lukasik_nll["eps=0.1 vs eps=0 at noise rate 0.2"]["verdict"],
            lukasik_nll["eps=0.1 vs eps=0 at noise rate 0.2"]["wording"]) == ("not supported", "negligible")
    assert lukasik_nll["eps=0.3 vs eps=0 at noise rate 0.4"]["verdict"] == "supported"
    # four eps x three rates: Lukasik at r in {0.2, 0.4} for eps in {0.1, 0.3} on two quantities, Wei at
    # r in {0.2, 0.4} against eps=0.3 and eps=0
    assert len([v for v in found if v["claim"] == "label-noise"]) == 8
    assert len([v for v in found if v["claim"] == "negative-smoothing"]) == 4
    primaries = sorted((v["claim"], v["contrast"], v["quantity"]) for v in found if v["primary"])
    assert primaries == [("label-noise", "eps=0.3 vs eps=0 at noise rate 0.4", "clean test accuracy"),
                         ("negative-smoothing", "eps=-0.2 vs eps=0.3 at noise rate 0.4", "clean test accuracy")]


def test_one_seed_is_inconclusive_and_a_clean_sweep_has_no_section(tmp_path):
    one = results({(0.0, 0.0): [0.8], (0.4, 0.0): [0.6], (0.4, 0.1): [0.7]})
    assert [v["verdict"] for v in label_noise.section(ReportContext(one, tmp_path)).verdicts] == ["inconclusive"] * 2
    clean = results({(0.0, 0.0): [0.8, 0.81], (0.0, 0.1): [0.82, 0.83]})
    assert label_noise.section(ReportContext(clean, tmp_path)) is None


def test_a_negative_eps_whose_training_loss_fell_below_zero_is_named(tmp_path):
    found = results({(r, e): [0.7, 0.71] for r in (0.0, 0.4) for e in (-0.2, 0.0)})
    assert "Run-away" not in label_noise.section(ReportContext(found, tmp_path)).html
    for run in found["runs"]:
        run["history"] = [{"train_loss": 0.5}, {"train_loss": -3.0 - run["seed"] if run["label_smoothing"] < 0
                                                and run["label_noise"] == 0 else 0.2}]
    html = label_noise.section(ReportContext(found, tmp_path)).html
    assert "Run-away loss" in html and "eps=-0.2 at noise rate 0 (down to -4)" in html
    assert "noise rate 0.4 (" not in html


def test_memorised_is_the_fraction_of_flipped_labels_the_model_predicts(tmp_path):
    clean = np.arange(20) % 4
    noisy = flip_labels(torch.from_numpy(clean), 0.5, num_classes=4, seed=3)
    flipped, given = noisy.flipped.numpy(), noisy.labels.numpy()[noisy.flipped.numpy()]
    np.savez(tmp_path / "label_noise.npz", train_labels=clean, **{"flipped_noise0.5_seed0": flipped,
                                                                    "labels_noise0.5_seed0": given})
    predicted = clean.copy()
    predicted[flipped[:4]] = given[:4]      # the model fits 4 of the 10 wrong labels
    logits = np.eye(4, dtype=np.float32)[predicted] * 5
    (tmp_path / "cells" / "cell").mkdir(parents=True)
    np.savez(tmp_path / "cells" / "cell" / "final.npz", train_logits=logits, train_target=clean)
    run = {"label_noise": 0.5, "seed": 0, "cell": "cell"}
    assert len(flipped) == 10 and label_noise.memorised(tmp_path, run) == pytest.approx(0.4)
    assert label_noise.memorised(tmp_path, {**run, "label_noise": 0.0}) is None


def run_preset(out: Path, *extra: str) -> dict:
    argv = ["reproduce", "label-noise", "--quick", "--out", str(out), "--no-progress", "--threads", "1", *extra]
    assert cli_main(argv) == 0
    return json.loads((out / "verdicts.json").read_text())


def test_reproduce_label_noise_on_digits_writes_the_section_and_its_verdicts(tmp_path, capsys):
    out = tmp_path / "run"
    found = run_preset(out, "--dataset", "digits", "--train-fraction", "1", "--epochs", "2", "--seeds", "0", "1",
                       "--label-noise", "0", "0.4", "--label-smoothing", "-0.2", "0", "0.1", "--mlp-widths", "32")
    noise = [v for v in found if v["section"] == "label noise"]
    assert {v["claim"] for v in noise} == {"label-noise", "negative-smoothing"}
    assert all(v["split"] == "test" and v["n_seeds"] == 2 and v["source"] for v in noise)
    page = (out / "report.html").read_text()
    assert "Label noise" in page and (out / "label_noise_mlp_uniform.png").is_file()
    config = json.loads((out / "config.json").read_text())
    assert (config["preset"], config["quick"], config["label_noise"]) == ("label-noise", True, [0.0, 0.4])
    with np.load(out / "label_noise.npz") as draws:  # validation and test labels are clean
        assert {"flipped_noise0.4_seed0", "flipped_noise0.4_seed1"} <= set(draws.files)
    capsys.readouterr()


def test_bad_noise_settings_are_refused_in_one_line(tmp_path, capsys):
    for flags, message in ((["--label-noise", "1"], "--label-noise"), (["--label-noise", "-0.1"], "--label-noise"),
                           (["--noise-kind", "pairs"], "--noise-kind")):
        with pytest.raises(SystemExit) as exit_:
            cli_main(["reproduce", "label-noise", "--quick", "--out", str(tmp_path / "x"), *flags])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert cli_main(["reproduce", "label-noise", "--quick", "--out", str(tmp_path / "y"), "--noise-kind",
                     "asymmetric", "--dataset", "digits", "--no-progress"]) == 2  # 0.6 >= 0.5 for swaps
    assert "label_noise must be below 0.5" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Fashion-MNIST is not installed at "
                                                       "/usr/share/datasets/fashion-mnist")
def test_reproduce_label_noise_on_fashion_mnist_one_epoch(tmp_path):
    found = run_preset(tmp_path / "run", "--epochs", "1", "--seeds", "0", "1", "--label-noise", "0", "0.6",
                       "--label-smoothing", "-0.2", "0", "0.3")
    assert len([v for v in found if v["section"] == "label noise" and v["primary"]]) == 2


TINY_GRID = dict(dataset="digits", train_fraction=1.0, epochs=3, seeds=[0, 1], label_noise=[0.0, 0.4],
                 label_smoothing=[-0.2, 0.0, 0.1], mlp_widths=[16])


def without_provenance(results: dict) -> dict:
    return {k: v for k, v in results.items() if k != "provenance"}


def test_an_interrupted_label_noise_preset_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "build_report", lambda run_dir: None)  # the report is tested above
    train_epoch, calls = CellGroup.train_epoch, []

    def interrupted_after_two_epochs(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return train_epoch(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(CellGroup, "train_epoch", interrupted_after_two_epochs)
        with pytest.raises(KeyboardInterrupt):
            presets.reproduce("label-noise", quick=True, progress=False, out=str(tmp_path / "a"), **TINY_GRID)
    assert not json.loads((tmp_path / "a" / "results.json").read_text())["complete"]
    presets.reproduce("label-noise", quick=True, progress=False, out=str(tmp_path / "a"), **TINY_GRID)
    assert "resuming" in capsys.readouterr().out
    presets.reproduce("label-noise", quick=True, progress=False, out=str(tmp_path / "b"), **TINY_GRID)
    resumed, whole = (json.loads((tmp_path / d / "results.json").read_text()) for d in "ab")
    assert resumed["complete"] and len(resumed["runs"]) == 12
    assert without_provenance(resumed) == without_provenance(whole)
    for name in ["label_noise.npz"] + [f"cells/{run['cell']}/final.npz" for run in whole["runs"]]:
        with np.load(tmp_path / "a" / name) as x, np.load(tmp_path / "b" / name) as y:
            assert x.files == y.files and all(np.array_equal(x[k], y[k]) for k in x.files)


def test_label_noise_npz_records_the_flips_and_every_evaluation_label_is_clean(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "build_report", lambda run_dir: None)
    out = presets.reproduce("label-noise", quick=True, progress=False, out=str(tmp_path / "run"),
                            **{**TINY_GRID, "epochs": 1})
    dataset = load_dataset("digits", train_fraction=1.0, seed=0)
    clean = dataset.y_train.numpy()
    with np.load(out / "label_noise.npz") as draws:
        np.testing.assert_array_equal(draws["train_labels"], clean)
        for seed in (0, 1):
            flipped, given = draws[f"flipped_noise0.4_seed{seed}"], draws[f"labels_noise0.4_seed{seed}"]
            assert len(flipped) == int(np.floor(0.4 * len(clean) + 0.5)) == len(set(flipped.tolist()))
            assert (given != clean[flipped]).all() and ((0 <= given) & (given < 10)).all()
    for run in json.loads((out / "results.json").read_text())["runs"]:
        with np.load(out / "cells" / run["cell"] / "final.npz") as arrays:
            for split in ("train", "holdout", "test"):
                np.testing.assert_array_equal(arrays[f"{split}_target"], getattr(dataset, f"y_{split}").numpy())
