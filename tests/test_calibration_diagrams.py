"""Reliability diagrams render headless to valid PNGs and draw the binned numbers they claim."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from labelsmooth.calibration.diagrams import reliability_bins, reliability_diagram, reliability_diagrams
from labelsmooth.calibration.metrics import expected_calibration_error

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def predictions(seed: int, n: int = 800, k: int = 5, temperature: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * 2
    target = torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)
    return logits / temperature, target


def assert_png(path, min_width: int):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert 10_000 < len(data) < 2_000_000
    image = imread(path)
    assert image.shape[1] >= min_width and image.shape[0] >= 300
    assert image[..., :3].std() > 0.05  # something was drawn


def test_bins_match_a_float64_reference():
    logits, target = predictions(0)
    probs = logits.softmax(1).numpy()
    conf, correct = probs.max(1), probs.argmax(1) == target.numpy()
    bins = reliability_bins(logits, target, 10, from_logits=True)
    for b in range(10):
        members = (conf > b / 10) & (conf <= (b + 1) / 10)
        assert bins.count[b] == members.sum()
        if members.any():
            assert bins.accuracy[b] == pytest.approx(correct[members].mean(), abs=1e-12)
            assert bins.confidence[b] == pytest.approx(conf[members].mean(), abs=1e-12)
    assert bins.mean_confidence == pytest.approx(conf.mean(), abs=1e-12)
    assert bins.overall_accuracy == pytest.approx(correct.mean(), abs=1e-12)


@pytest.mark.slow
def test_side_by_side_png_has_a_panel_and_histogram_per_model(tmp_path):
    models = {f"eps={t}": predictions(1, temperature=t) for t in (0.4, 1.0, 2.5)}
    path = tmp_path / "side.png"
    figure = reliability_diagrams(models, path, from_logits=True, title="sweep")
    assert_png(path, min_width=700)
    assert len(figure.axes) == 6
    for (label, (logits, target)), ax in zip(models.items(), figure.axes[::2]):
        ece = expected_calibration_error(logits, target, 15, from_logits=True).item()
        assert ax.get_title() == f"{label}\nECE {ece:.3f}"


def test_overlay_png_draws_one_line_per_model(tmp_path):
    models = {"over": predictions(2, temperature=0.3), "under": predictions(2, temperature=3.0)}
    path = tmp_path / "overlay.png"
    figure = reliability_diagrams(models, path, layout="overlay", from_logits=True)
    assert_png(path, min_width=400)
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert labels[0].startswith("over (ECE") and labels[1].startswith("under (ECE")


def test_single_model_and_probabilities(tmp_path):
    logits, target = predictions(3)
    path = tmp_path / "one.png"
    reliability_diagram(logits.softmax(1), target, path, label="net")
    assert_png(path, min_width=300)


def test_bad_arguments():
    logits, target = predictions(4)
    with pytest.raises(ValueError, match="layout must be one of"):
        reliability_diagrams({"a": (logits, target)}, layout="grid", from_logits=True)
    with pytest.raises(ValueError, match="at least one"):
        reliability_diagrams({})
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        reliability_diagram(logits, target)  # logits without from_logits=True


@pytest.mark.slow
def test_importing_the_package_does_not_import_matplotlib_or_pyplot():
    code = ("import sys, labelsmooth.calibration as c; assert 'matplotlib' not in sys.modules; "
            "import torch; c.reliability_diagram(torch.tensor([[0.6, 0.4]]), torch.tensor([0])); "
            "assert 'matplotlib.pyplot' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_numpy_inputs(tmp_path):
    logits, target = predictions(5)
    reliability_diagram(logits.softmax(1).numpy(), target.numpy().astype(np.int32), tmp_path / "np.png")
    assert (tmp_path / "np.png").exists()
