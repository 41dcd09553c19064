"""lab.report.builder: report files built from synthetic results.json (escaping, embedded images,
nothing loaded from the network, the sections, the `labelsmooth report` command)."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest
from scipy import stats

from labelsmooth.cli import main as cli_main
from labelsmooth.lab.report import builder

METRICS = ("train_loss", "val_loss", "val_nll", "val_accuracy", "val_ece")


@pytest.fixture(scope="module")
def built(tmp_path_factory, lab_runs):
    """A report built once for a malicious run name and config strings, three seeds."""
    name = '<img src=x onerror="alert(1)">&run'
    config = {"dataset": "<script>alert('data')</script>", "model": "seed-cnn",
              "class_names": ["T-shirt</td><b>", "Trouser"]}
    results = lab_runs.results({0.0: [0.30, 0.32, 0.29], 0.05: [0.2, 0.21, 0.19],
                                 0.1: [0.05, 0.06, 0.04]}, config=config)
    run_dir = lab_runs.write(tmp_path_factory.mktemp("runs") / name, results)
    path = builder.build_report(run_dir)
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


def test_report_tables_and_verdicts_follow_the_numbers(built, lab_runs):
    run_dir, page = built
    verdicts = lab_runs.verdicts_of(page)
    assert {(v["claim"], v["scope"]): v["verdict"] for v in verdicts if v["claim"] == "1"} == {
        ("1", "eps=0.05 vs eps=0"): "supported", ("1", "eps=0.1 vs eps=0"): "supported"}
    assert [v["claim"] for v in verdicts] == sorted(v["claim"] for v in verdicts)
    rises = np.array([0.05, 0.06, 0.04]) - np.array([0.30, 0.32, 0.29])
    ci = stats.t.interval(0.95, 2, loc=rises.mean(), scale=stats.sem(rises))
    assert f"{rises.mean():.4f} [{ci[0]:.4f}, {ci[1]:.4f}]" in page
    summary = (run_dir / "summary.txt").read_text()
    assert "claim 1 (eps=0.1 vs eps=0): SUPPORTED" in summary


def test_single_seed_report_shows_unavailable_intervals(tmp_path, lab_runs):
    run_dir = lab_runs.write(tmp_path / "one", lab_runs.results({0.0: [0.3], 0.1: [0.1]}))
    page = builder.build_report(run_dir).read_text()
    assert "n/a (1 seed)" in page
    assert {v["verdict"] for v in lab_runs.verdicts_of(page)} == {"inconclusive"}


def test_partial_results_report_without_error(tmp_path, lab_runs):
    results = lab_runs.results({0.0: [0.3, 0.3], 0.1: [0.1, 0.1]})
    results["complete"] = False
    del results["runs"][-1]["test"]
    results["runs"][-1]["history"] = results["runs"][-1]["history"][:5]
    page = builder.build_report(lab_runs.write(tmp_path / "partial", results)).read_text()
    assert "not complete" in page


def fake_section(results, run_dir):
    return ('<p id="fake">cells: %d</p>' % len(results["runs"]),
            [dict(claim="9", statement="a fake claim", scope="all", verdict="supported", evidence="fake evidence")])


def broken_section(results, run_dir):
    return "", [dict(claim="9", statement="s", scope="all", verdict="probably")]


def test_sections_add_html_and_verdicts_and_bad_verdicts_are_refused(tmp_path, lab_runs):
    run_dir = lab_runs.write(tmp_path / "run", lab_runs.results({0.0: [0.3, 0.3], 0.1: [0.1, 0.1]}))
    page = builder.build_report(run_dir, sections=[*builder.SWEEP_SECTIONS, fake_section]).read_text()
    assert '<p id="fake">cells: 4</p>' in page
    assert any(v["claim"] == "9" and v["evidence"] == "fake evidence" for v in lab_runs.verdicts_of(page))
    with pytest.raises(ValueError, match="broken_section"):
        builder.build_report(run_dir, sections=[broken_section])


def test_a_sweep_gets_the_sweep_sections_and_the_claims_with_their_sources(tmp_path, lab_runs):
    results = lab_runs.results({0.0: [0.3, 0.31], 0.1: [0.1, 0.12]})
    assert builder.sections_for(results) == builder.SWEEP_SECTIONS
    page = builder.build_report(lab_runs.write(tmp_path / "run", results)).read_text()
    claims = re.search(r'<ul class="claims">(.*?)</ul>', page).group(1)
    assert "Fashion-MNIST" in claims and "Szegedy et al. 2016" in claims and "Müller" in claims
    assert not re.search(r"SEEDS\.md|seed 00\d|issue \d", page)


def test_report_command_rebuilds_and_rejects_a_non_run_dir(tmp_path, capsys, lab_runs):
    run_dir = lab_runs.write(tmp_path / "run", lab_runs.results({0.0: [0.3, 0.31], 0.1: [0.1, 0.12]}))
    assert cli_main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "report.html" in out and "claim 1" in out
    assert (run_dir / "report.html").is_file()
    assert cli_main(["report", str(tmp_path / "missing")]) == 2
    assert "results.json" in capsys.readouterr().err
