"""lab.report.builder: report files built from synthetic results.json and from a real tiny sweep:
escaping, embedded images, nothing loaded from the network, verdicts.json (schema, agreement with
the page and with the rule), one seed inconclusive everywhere, the section interface, the
plain-language summary, provenance and contents, the `labelsmooth report` command."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
from scipy import stats

from labelsmooth.cli import main as cli_main
from labelsmooth.lab.config import SweepConfig
from labelsmooth.lab.report import builder
from labelsmooth.lab.report.context import SectionOutput
from labelsmooth.lab.report.verdicts import FIELDS, Claim, judge

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


@pytest.mark.slow
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
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", page, re.I)
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(METRICS)
    for metric, data in zip(METRICS, images):
        png = base64.b64decode(data)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert (run_dir / f"curves_{metric}.png").read_bytes() == png


def reference_verdict(record: dict) -> str:
    """The rule, restated from its documentation, applied to a verdicts.json record."""
    if record["n_seeds"] < 2:
        return "inconclusive"
    if record["reason"].startswith("not applicable"):
        return "not applicable"
    if record["low"] is None:
        return "inconclusive"
    sign = (1 if record["better"] == "higher" else -1) * (1 if record["predicts"] == "improvement" else -1)
    a, b = sorted((sign * record["low"], sign * record["high"]))
    if a > 0 and b >= record["margin"]:
        return "supported"
    return "not supported" if b < record["margin"] else "inconclusive"


def check_verdicts_json_against_the_page(run_dir, page, lab_runs) -> list[dict]:
    records = json.loads((run_dir / "verdicts.json").read_text())
    assert records == lab_runs.verdicts_of(page)
    for record in records:
        assert set(FIELDS) <= set(record)
        assert record["verdict"] == reference_verdict(record), record
        assert isinstance(record["primary"], bool) and record["better"] in ("higher", "lower")
        row = f'<td class="{record["verdict"].replace(" ", "-")}">{record["verdict"]}'
        assert row in page  # rendered in a verdict table
    return records


def test_verdicts_json_follows_the_rule_and_agrees_with_the_page(built, lab_runs):
    run_dir, page = built
    records = check_verdicts_json_against_the_page(run_dir, page, lab_runs)
    over = {r["contrast"]: r for r in records if r["claim"] == "overfitting"}
    assert {c: r["verdict"] for c, r in over.items()} == {"eps=0.05 vs eps=0": "supported",
                                                          "eps=0.1 vs eps=0": "supported"}
    tail = 7 / 8  # the synthetic rises: the mean of the last 3 of 12 epochs sits 7/8 of the rise up
    rises = tail * (np.array([0.05, 0.06, 0.04]) - np.array([0.30, 0.32, 0.29]))
    ci = stats.t.interval(0.95, 2, loc=rises.mean(), scale=stats.sem(rises))
    record = over["eps=0.1 vs eps=0"]
    assert (record["low"], record["high"]) == pytest.approx(ci, abs=1e-4)
    summary = (run_dir / "summary.txt").read_text()
    assert "Smoothing over-fits less: SUPPORTED" in summary and "What was tested:" in summary


def test_the_page_starts_with_the_summary_and_has_contents_and_provenance(built):
    _, page = built
    found, contents = page.index('id="found"'), page.index("<nav>")
    assert found < contents < page.index("<section")
    for anchor in re.findall(r'<a href="#([^"]+)">', page):
        assert f'id="{anchor}"' in page
    assert "torch version" in page and "git commit" in page and "wall time" in page


def test_text_has_no_backticks_and_no_internal_references(built):
    _, page = built
    text = re.sub(r"<[^>]+>", " ", page.split('<script type="application/json"')[0])
    assert "`" not in text
    assert not re.search(r"SEEDS\.md|DESIGN\.md|seed 00\d|issue \d", page)


def one_seed_tiny_sweep(tmp_path, seeds, sweep_without_report):
    config = SweepConfig(dataset="digits", models=("mlp",), model_options={"mlp": {"widths": [16]}},
                         label_smoothing=(0.0, 0.1), seeds=seeds, epochs=4, batch_size=64, optimizer="adam",
                         lr=0.01, train_fraction=0.5)
    run_dir = sweep_without_report(config, tmp_path / "run")
    return run_dir, builder.build_report(run_dir).read_text()


@pytest.mark.slow
def test_a_real_sweep_with_one_seed_is_inconclusive_everywhere(tmp_path, lab_runs, sweep_without_report):
    run_dir, page = one_seed_tiny_sweep(tmp_path, (0,), sweep_without_report)
    records = check_verdicts_json_against_the_page(run_dir, page, lab_runs)
    sections = {r["section"] for r in records}
    assert {"final test metrics", "over-fitting", "calibration", "decisive comparisons",
            "selective classification", "penultimate layer"} <= sections
    assert {r["verdict"] for r in records} == {"inconclusive"}
    assert "n/a (1 seed)" in page


@pytest.mark.slow
def test_a_real_sweep_with_two_seeds_has_every_section_and_follows_the_rule(tmp_path, lab_runs,
                                                                          sweep_without_report):
    run_dir, page = one_seed_tiny_sweep(tmp_path, (0, 1), sweep_without_report)
    records = check_verdicts_json_against_the_page(run_dir, page, lab_runs)
    primary = [r for r in records if r["primary"]]
    assert {r["contrast"] for r in primary} >= {"eps=0.1 vs eps=0"}
    assert all(r["n_seeds"] == 2 and r["half_width"] is not None for r in records if r["verdict"] != "not applicable")
    for name in ("calibration_reliability.png", "selective_risk_coverage.png", "penultimate_mlp_3-8-1.png"):
        assert (run_dir / name).is_file()
    assert "Is a simpler fix as good?" in (run_dir / "summary.txt").read_text()


@pytest.mark.slow
def test_partial_results_report_without_error(tmp_path, lab_runs):
    results = lab_runs.results({0.0: [0.3, 0.3], 0.1: [0.1, 0.1]})
    results["complete"] = False
    del results["runs"][-1]["test"]
    results["runs"][-1]["history"] = results["runs"][-1]["history"][:5]
    page = builder.build_report(lab_runs.write(tmp_path / "partial", results)).read_text()
    assert "not complete" in page


FAKE = Claim("fake", "A fake claim", "Smoothing does something.", "a made-up source")


def fake_section(context):
    record = judge(FAKE, {0: 1.0, 1: 1.1}, {0: 2.0, 1: 2.2}, section="fake", split="test", contrast="c",
                   quantity="q", primary=True, better="lower", margin=0.1, scope=context.scope)
    return SectionOutput("A fake section", '<p id="fake">cells: %d</p>' % len(context.results["runs"]), [record])


def broken_section(context):
    return SectionOutput("Broken", "", [dict(claim="9", statement="s", verdict="probably")])


@pytest.mark.slow
def test_a_new_section_is_one_function_and_bad_records_are_refused(tmp_path, lab_runs):
    run_dir = lab_runs.write(tmp_path / "run", lab_runs.results({0.0: [0.3, 0.3], 0.1: [0.1, 0.1]}))
    page = builder.build_report(run_dir, sections=[*builder.SWEEP_SECTIONS, fake_section]).read_text()
    assert '<p id="fake">cells: 4</p>' in page and "A fake section</a>" in page
    assert any(v["claim"] == "fake" and v["source"] == "a made-up source" for v in lab_runs.verdicts_of(page))
    assert "A fake claim: SUPPORTED" in (run_dir / "summary.txt").read_text()
    with pytest.raises(ValueError, match="broken_section"):
        builder.build_report(run_dir, sections=[broken_section])


@pytest.mark.slow
def test_a_sweep_gets_the_sweep_sections_and_the_claims_with_their_sources(tmp_path, lab_runs):
    results = lab_runs.results({0.0: [0.3, 0.31], 0.1: [0.1, 0.12]})
    assert builder.sections_for(results) == builder.SWEEP_SECTIONS
    page = builder.build_report(lab_runs.write(tmp_path / "run", results)).read_text()
    claims = re.search(r'<ul class="claims">(.*?)</ul>', page).group(1)
    assert "Fashion-MNIST" in claims and "Szegedy et al. 2016" in claims


@pytest.mark.slow
def test_a_legacy_run_says_so_at_the_top(tmp_path, lab_runs):
    results = lab_runs.results({0.0: [0.3, 0.31], 0.1: [0.1, 0.12]})
    del results["config"]["validation_split"]
    page = builder.build_report(lab_runs.write(tmp_path / "run", results)).read_text()
    assert page.index('class="legacy"') < page.index('id="found"')
    assert "per-epoch metrics of this run came from the test split" in page


@pytest.mark.slow
def test_report_command_rebuilds_and_rejects_a_non_run_dir(tmp_path, capsys, lab_runs):
    run_dir = lab_runs.write(tmp_path / "run", lab_runs.results({0.0: [0.3, 0.31], 0.1: [0.1, 0.12]}))
    assert cli_main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "report.html" in out and "Smoothing over-fits less" in out
    assert (run_dir / "report.html").is_file() and (run_dir / "verdicts.json").is_file()
    assert cli_main(["report", str(tmp_path / "missing")]) == 2
    assert "results.json" in capsys.readouterr().err
