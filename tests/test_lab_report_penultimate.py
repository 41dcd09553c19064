"""lab.report.penultimate: cluster measures against numpy and scipy, and the section on a small
digits sweep (its table against activations recomputed here, class names, train and test verdicts,
a model file that does not fit)."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from labelsmooth.lab.config import SweepConfig
from labelsmooth.lab.data import load_dataset
from labelsmooth.lab.models import build_model
from labelsmooth.lab.report.context import ReportContext
from labelsmooth.lab.report.penultimate import FULL, SPAN, CellActivations, cell_measures, section
from labelsmooth.lab.rundir import load_results


def report_section(results, run_dir):
    output = section(ReportContext(results, run_dir))
    return output.html, output.verdicts

# an MLP sweep of two seeds at eps 0 and 0.3 (a few seconds on one thread)
CONFIG = SweepConfig(dataset="digits", models=("mlp",), model_options={"mlp": {"widths": [32, 32]}},
                     label_smoothing=(0.0, 0.3), seeds=(0, 1), epochs=3, batch_size=64, optimizer="adam",
                     lr=0.01, train_fraction=0.4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sweep_without_report):
    """The sweep's run directory (its report not built: the tests build the section)."""
    return sweep_without_report(CONFIG, tmp_path_factory.mktemp("penultimate") / "run")


@pytest.mark.slow
def test_penultimate_section_measures_match_numpy(trained):
    run_dir = trained
    results = load_results(run_dir)
    html, verdicts = report_section(results, run_dir)
    assert (run_dir / "penultimate_mlp_3-8-1.png").is_file()
    # two claims, each judged on the training and on the test split
    assert sorted((v["claim"], v["split"]) for v in verdicts) == [
        ("equidistant-clusters", "test"), ("equidistant-clusters", "train"),
        ("tight-clusters", "test"), ("tight-clusters", "train")]
    assert "<td>plane of 3, 8, 1</td>" in html  # digits' class names
    # recompute one table cell: tightness in the full penultimate space, eps=0, train split, two seeds
    config = results["config"]
    dataset = load_dataset("digits", train_fraction=config["train_fraction"], seed=config["data_seed"])
    values = []
    for seed in (0, 1):
        model = build_model("mlp", 10, dataset.in_shape, widths=config["model_options"]["mlp"]["widths"])
        model.load_state_dict(torch.load(run_dir / "cells" / f"mlp-uniform-eps0-seed{seed}" / "model.pt",
                                         weights_only=True))
        with torch.no_grad():
            a = model.penultimate(dataset.x_train).double().numpy()
        y = dataset.y_train.numpy()
        means = np.stack([a[y == k].mean(0) for k in range(10)])
        spread = [np.sqrt(np.mean(np.sum((a[y == k] - means[k]) ** 2, 1))) for k in range(10)]
        values.append(np.mean(spread) / pdist(means).mean())
    row = re.search(r"<td>full penultimate space</td><td>train</td><td>eps=0</td><td>2</td><td>([0-9.]+) ", html)
    assert float(row.group(1)) == pytest.approx(np.mean(values), abs=5e-4)


@pytest.mark.slow
def test_penultimate_section_skips_a_model_file_that_does_not_fit(trained, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    torch.save({"other.weight": torch.zeros(1)}, run_dir / "cells" / "mlp-uniform-eps0-seed1" / "model.pt")
    html, verdicts = report_section(load_results(run_dir), run_dir)
    assert "Skipped a cell" in html and "does not fit model" in html and "other.weight" in html
    # one seed left for the pair: the verdicts are stated, and inconclusive
    assert [v["verdict"] for v in verdicts] == ["inconclusive"] * 4


def test_cell_measures_in_the_span_of_the_templates_match_numpy():
    rng = np.random.default_rng(0)
    templates = rng.standard_normal((4, 6))
    labels = np.repeat(np.arange(4), 30)
    points = 3 * templates[labels] + rng.standard_normal((120, 6))
    cell = CellActivations({"train": (torch.from_numpy(points), torch.from_numpy(labels)),
                            "test": (torch.from_numpy(points[::2]), torch.from_numpy(labels[::2]))},
                           torch.from_numpy(templates))
    measures = cell_measures(cell, [(0, 1, 2)])
    q, _ = np.linalg.qr((templates[1:] - templates[0]).T)
    projected = points @ q
    means = np.stack([projected[labels == k].mean(0) for k in range(4)])
    spread = [np.sqrt(np.mean(np.sum((projected[labels == k] - means[k]) ** 2, 1))) for k in range(4)]
    distances = pdist(means)
    assert measures[SPAN]["train"]["tightness"] == pytest.approx(np.mean(spread) / distances.mean())
    assert measures[SPAN]["train"]["equidistance_cv"] == pytest.approx(distances.std() / distances.mean())
    assert set(measures) == {SPAN, FULL, "plane of classes (0, 1, 2)"}


def test_cell_measures_skip_the_span_when_the_layer_is_narrower_than_k_minus_1():
    rng = np.random.default_rng(1)
    labels = torch.arange(10).repeat(5)
    activations = {split: (torch.from_numpy(rng.standard_normal((50, 3))), labels) for split in ("train", "test")}
    cell = CellActivations(activations, torch.from_numpy(rng.standard_normal((10, 3))))
    assert set(cell_measures(cell, [(0, 1, 2)])) == {FULL, "plane of classes (0, 1, 2)"}
