"""Tests of the lab report: intervals over seeds (against scipy), verdict logic on constructed
histories, and the report files built from synthetic results.json (escaping, embedded images,
nothing loaded from the network, the section registry, the `labelsmooth report` command)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from labelsmooth.cli import main as cli_main
from labelsmooth.lab import report
from labelsmooth.lab.stats import estimate, paired_difference, t_quantile_975

METRICS = ("train_loss", "val_loss", "val_nll", "val_accuracy", "val_ece")


# Synthetic runs ---------------------------------------------------------------------------------


def synthetic_history(epochs: int, minimum_epoch: int, rise: float, offset: float) -> list[dict]:
    """val_nll falls to 0.5 + offset at ``minimum_epoch`` then rises linearly by ``rise``."""
    rows = []
    for epoch in range(1, epochs + 1):
        if epoch <= minimum_epoch:
            nll = 0.5 + offset + (minimum_epoch - epoch) * 0.1
        else:
            nll = 0.5 + offset + rise * (epoch - minimum_epoch) / (epochs - minimum_epoch)
        rows.append(dict(epoch=epoch, train_loss=1.0 / epoch, val_loss=nll + 0.2, val_nll=nll,
                         val_accuracy=0.8 + offset, val_ece=0.05 + offset))
    return rows


def synthetic_results(rises: dict[float, list[float]], *, epochs: int = 12, minimum_epoch: int = 4,
                      accuracy: dict[float, list[float]] | None = None, config: dict | None = None) -> dict:
    """results.json with one run per (eps, seed); ``rises[eps][seed]`` sets the val NLL rise."""
    runs = []
    for eps, per_seed in rises.items():
        for seed, rise in enumerate(per_seed):
            history = synthetic_history(epochs, minimum_epoch, rise, offset=0.001 * seed)
            acc = accuracy[eps][seed] if accuracy else history[-1]["val_accuracy"]
            runs.append(dict(label_smoothing=eps, seed=seed, distribution="uniform", model="seed-cnn",
                             cell=f"eps{eps}-seed{seed}", history=history,
                             test=dict(loss=history[-1]["val_loss"], nll=history[-1]["val_nll"],
                                       accuracy=acc, ece=history[-1]["val_ece"])))
    return {"config": config or {"dataset": "digits", "model": "seed-cnn"}, "runs": runs,
            "complete": True}


def write_run(directory: Path, results: dict) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(results["config"]))
    (directory / "results.json").write_text(json.dumps(results))
    return directory


def verdicts_of(page: str) -> list[dict]:
    found = re.search(r'<script type="application/json" id="verdicts-data">(.*?)</script>', page, re.S)
    return json.loads(found.group(1))


# Statistics against scipy -----------------------------------------------------------------------


def test_t_quantile_matches_scipy():
    for df in range(1, 400):
        tolerance = 6e-5 if df <= 30 else 1e-6  # table to 4 decimals; expansion beyond
        assert abs(t_quantile_975(df) - stats.t.ppf(0.975, df)) < tolerance, df


@pytest.mark.parametrize("n", [2, 3, 5, 10, 40])
def test_estimate_matches_scipy_t_interval(n):
    values = np.random.default_rng(n).normal(0.3, 0.05, size=n)
    expected = stats.t.interval(0.95, n - 1, loc=values.mean(), scale=stats.sem(values))
    found = estimate(values.tolist())
    assert found.mean == pytest.approx(values.mean(), abs=1e-12)
    assert (found.low, found.high) == pytest.approx(expected, abs=1e-5)


def test_paired_difference_matches_scipy_paired_t():
    rng = np.random.default_rng(0)
    baseline = rng.normal(0.5, 0.1, size=5)
    treated = baseline - 0.02 + rng.normal(0, 0.005, size=5)
    expected = stats.ttest_rel(treated, baseline).confidence_interval(0.95)
    found = paired_difference(dict(enumerate(treated)), {**dict(enumerate(baseline)), 9: 3.0})
    assert found.n == 5  # seed 9 has no partner
    assert (found.low, found.high) == pytest.approx((expected.low, expected.high), abs=1e-5)
    assert paired_difference({0: 1.0}, {1: 1.0}) is None


def test_single_seed_has_no_interval_and_bad_input_is_refused():
    single = estimate([0.25])
    assert (single.low, single.high, single.has_interval) == (None, None, False)
    assert "n/a (1 seed)" in single.format()
    with pytest.raises(ValueError, match="values"):
        estimate([])
    with pytest.raises(ValueError, match="finite"):
        estimate([1.0, float("nan")])
    with pytest.raises(ValueError, match="df"):
        t_quantile_975(0)


# Verdicts on constructed histories ---------------------------------------------------------------


def claim_verdicts(results: dict, claim: str) -> dict[str, str]:
    groups = report.group_runs(results)
    test = next(t for t in report.CLAIM_TESTS.values() if t.claim == claim)
    return {v["scope"]: v["verdict"] for v in report.claim_verdicts(test, groups)}


def test_clear_reduction_of_overfitting_is_supported():
    results = synthetic_results({0.0: [0.30, 0.32, 0.29], 0.1: [0.05, 0.06, 0.04]})
    assert claim_verdicts(results, "1") == {"eps=0.1 vs eps=0": "supported"}


def test_more_overfitting_with_smoothing_is_not_supported():
    results = synthetic_results({0.0: [0.30, 0.32, 0.29], 0.1: [0.40, 0.43, 0.41]})
    assert claim_verdicts(results, "1") == {"eps=0.1 vs eps=0": "not supported"}
    verdict, = report.claim_verdicts(report.CLAIM_TESTS["overfitting"], report.group_runs(results))
    assert "made it worse" in verdict["evidence"]


def test_precisely_no_difference_is_not_supported_and_noisy_one_is_inconclusive():
    same = synthetic_results({0.0: [0.30, 0.32, 0.29], 0.1: [0.301, 0.319, 0.291]})
    assert claim_verdicts(same, "1") == {"eps=0.1 vs eps=0": "not supported"}
    noisy = synthetic_results({0.0: [0.30, 0.32, 0.29], 0.1: [0.10, 0.45, 0.25]})
    assert claim_verdicts(noisy, "1") == {"eps=0.1 vs eps=0": "inconclusive"}


def test_single_seed_or_baseline_without_overfitting_is_inconclusive():
    single = synthetic_results({0.0: [0.30], 0.1: [0.05]})
    assert claim_verdicts(single, "1") == {"eps=0.1 vs eps=0": "inconclusive"}
    flat = synthetic_results({0.0: [0.0, 0.0, 0.0], 0.1: [0.0, 0.0, 0.0]}, minimum_epoch=12)
    verdicts = report.claim_verdicts(report.CLAIM_TESTS["overfitting"], report.group_runs(flat))
    assert [v["verdict"] for v in verdicts] == ["inconclusive"]
    assert "does not over-fit" in verdicts[0]["evidence"]


def test_accuracy_claim_uses_the_seed_effect_size():
    rises = {0.0: [0.1] * 3, 0.1: [0.1] * 3}
    gain = synthetic_results(rises, accuracy={0.0: [0.80, 0.81, 0.82], 0.1: [0.81, 0.82, 0.83]})
    assert claim_verdicts(gain, "3") == {"eps=0.1 vs eps=0": "supported"}
    none = synthetic_results(rises, accuracy={0.0: [0.80, 0.81, 0.82], 0.1: [0.8001, 0.8099, 0.8201]})
    assert claim_verdicts(none, "3") == {"eps=0.1 vs eps=0": "not supported"}


def test_best_epoch_and_rise_follow_the_history():
    history = synthetic_history(10, minimum_epoch=3, rise=0.2, offset=0.0)
    epoch, minimum, final = report.best_epoch({"history": history})
    values = [row["val_nll"] for row in history]
    assert (epoch, minimum, final) == (int(np.argmin(values)) + 1, min(values), values[-1])
    assert report.overfitting_rise({"history": history}) == pytest.approx(0.2)


def test_judge_refuses_unknown_direction():
    with pytest.raises(ValueError, match="better"):
        report.judge(estimate([1.0, 2.0]), "smaller", 0.1)


# The report files ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A report built once for a malicious run name and config strings, three seeds."""
    name = '<img src=x onerror="alert(1)">&run'
    config = {"dataset": "<script>alert('data')</script>", "model": "seed-cnn",
              "class_names": ["T-shirt</td><b>", "Trouser"]}
    results = synthetic_results({0.0: [0.30, 0.32, 0.29], 0.05: [0.2, 0.21, 0.19],
                                 0.1: [0.05, 0.06, 0.04]}, config=config)
    run_dir = write_run(tmp_path_factory.mktemp("runs") / name, results)
    path = report.build_report(run_dir)
    return run_dir, path.read_text(encoding="utf-8")


def test_report_escapes_user_strings(built):
    run_dir, page = built
    assert '<img src=x onerror="alert(1)">' not in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;run" in page
    assert "<script>alert" not in page
    assert "</td><b>" not in page
    assert page.count("<script") == 1  # only the inert application/json verdict block


def test_report_embeds_every_curve_and_loads_nothing_from_the_network(built):
    run_dir, page = built
    assert not re.search(r"https?:", page, re.I)
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page, re.I)
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(METRICS)
    for metric, data in zip(METRICS, images):
        png = base64.b64decode(data)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert (run_dir / f"curves_{metric}.png").read_bytes() == png


def test_report_tables_and_verdicts_follow_the_numbers(built):
    run_dir, page = built
    verdicts = verdicts_of(page)
    assert {(v["claim"], v["scope"]): v["verdict"] for v in verdicts if v["claim"] == "1"} == {
        ("1", "eps=0.05 vs eps=0"): "supported", ("1", "eps=0.1 vs eps=0"): "supported"}
    assert [v["claim"] for v in verdicts] == sorted(v["claim"] for v in verdicts)
    rises = np.array([0.05, 0.06, 0.04]) - np.array([0.30, 0.32, 0.29])
    ci = stats.t.interval(0.95, 2, loc=rises.mean(), scale=stats.sem(rises))
    assert f"{rises.mean():.4f} [{ci[0]:.4f}, {ci[1]:.4f}]" in page
    summary = (run_dir / "summary.txt").read_text()
    assert "claim 1 (eps=0.1 vs eps=0): SUPPORTED" in summary


def test_single_seed_report_shows_unavailable_intervals(tmp_path):
    run_dir = write_run(tmp_path / "one", synthetic_results({0.0: [0.3], 0.1: [0.1]}))
    page = report.build_report(run_dir).read_text()
    assert "n/a (1 seed)" in page
    assert {v["verdict"] for v in verdicts_of(page)} == {"inconclusive"}


def test_partial_results_report_without_error(tmp_path):
    results = synthetic_results({0.0: [0.3, 0.3], 0.1: [0.1, 0.1]})
    results["complete"] = False
    del results["runs"][-1]["test"]
    results["runs"][-1]["history"] = results["runs"][-1]["history"][:5]
    page = report.build_report(write_run(tmp_path / "partial", results)).read_text()
    assert "not complete" in page


def test_section_registry_loads_dotted_names(tmp_path, monkeypatch):
    module = tmp_path / "modules" / "fake_lab_section.py"
    module.parent.mkdir()
    module.write_text(
        "def section(results, run_dir):\n"
        "    return ('<p id=\"fake\">cells: %d</p>' % len(results['runs']),\n"
        "            [dict(claim='9', statement='a fake claim', scope='all', verdict='supported',\n"
        "                  evidence='fake evidence')])\n"
        "def broken(results, run_dir):\n"
        "    return '', [dict(claim='9', statement='s', scope='all', verdict='probably')]\n")
    monkeypatch.syspath_prepend(str(module.parent))
    run_dir = write_run(tmp_path / "run", synthetic_results({0.0: [0.3, 0.3], 0.1: [0.1, 0.1]}))
    sections = report.REPORT_SECTIONS + ["fake_lab_section:section"]
    page = report.build_report(run_dir, sections=sections).read_text()
    assert '<p id="fake">cells: 4</p>' in page
    assert any(v["claim"] == "9" and v["evidence"] == "fake evidence" for v in verdicts_of(page))
    with pytest.raises(ValueError, match="fake_lab_section:broken"):
        report.build_report(run_dir, sections=["fake_lab_section:broken"])
    with pytest.raises(ValueError, match="module:function"):
        report.build_report(run_dir, sections=["fake_lab_section"])


def test_report_command_rebuilds_and_rejects_a_non_run_dir(tmp_path, capsys):
    run_dir = write_run(tmp_path / "run", synthetic_results({0.0: [0.3, 0.31], 0.1: [0.1, 0.12]}))
    assert cli_main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "report.html" in out and "claim 1" in out
    assert (run_dir / "report.html").is_file()
    assert cli_main(["report", str(tmp_path / "missing")]) == 2
    assert "results.json" in capsys.readouterr().err
