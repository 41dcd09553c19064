"""lab.distill: the distillation experiment on a CI-sized digits run, its report and its config.

One small run (digits, tiny MLPs, two seeds, a few epochs) is shared by the tests. The distilled
students are checked against a reference trainer written from the definitions: an ordinary
``nn.Module``, ``torch.optim.Adam``, and torch's ``kl_div`` / ``cross_entropy``.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labelsmooth.cli import main
from labelsmooth.lab import distill
from labelsmooth.lab.cells import epoch_order
from labelsmooth.lab.config import SweepConfig
from labelsmooth.lab.data import DEFAULT_FASHION_MNIST_DIR, load_dataset, training_subset
from labelsmooth.lab.distill import DistillationConfig, run_distillation
from labelsmooth.lab.models import build_model
from labelsmooth.lab.report.verdicts import FIELDS, VERDICTS
from labelsmooth.lab.rundir import RunDirectoryError, open_run_directory

SETTINGS = dict(dataset="digits", teacher_widths=(32, 32), student_widths=(16,), label_smoothing=(0.0, 0.3),
                seeds=(0, 1), temperatures=(1.0, 4.0), smoothed_temperatures=(1.0, 4.0), beta=0.25, epochs=3,
                batch_size=64, lr=0.01, train_fraction=0.4, student_train_size=150, student_epochs=6)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("distillation") / "run"
    config = DistillationConfig.from_dict(SETTINGS)
    results = run_distillation(config, out, progress=False)
    yield config, out, results
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_run_directory_holds_every_role_and_the_report(run):
    config, out, results = run
    roles = [r["model"] for r in results["runs"]]
    assert roles.count("teacher") == 4 and roles.count("student, trained directly") == 4
    # both teachers at two temperatures, two seeds each
    assert roles.count("student, distilled at T=1") == 4 and roles.count("student, distilled at T=4") == 4
    assert json.loads((out / "results.json").read_text()) == results and results["complete"]
    for name in ("report.html", "summary.txt", "distillation_students.png", "distillation_temperatures.png",
                 "penultimate_mlp_3-8-1.png",
                 "penultimate_mlp_0-1-4.png", "teachers/report.html", "students/report.html"):
        assert (out / name).is_file(), name
    page = (out / "report.html").read_text()
    assert "Knowledge distillation" in page and "Teachers&#x27; penultimate layer" in page
    assert "https://" not in page and "http://" not in re.sub(r"data:image/png;base64,[^\"]*", "", page)


def test_distilled_student_matches_a_reference_trainer(run):
    config, out, results = run
    fraction, seed = config.training.train_fraction, config.training.data_seed
    full = load_dataset("digits", train_fraction=fraction, seed=seed)  # the teachers' images
    dataset = load_dataset("digits", train_fraction=fraction, seed=seed, train_size=config.student_train_size)
    # the students' images are the directly trained students' subset of the teachers'
    subset = training_subset(full.y_train.numpy(), config.student_train_size, seed)
    assert len(subset) == 150 and torch.equal(full.x_train[subset], dataset.x_train)
    student = next(r for r in results["runs"] if r["model"] == "student, distilled at T=4" and r["seed"] == 1
                   and r["label_smoothing"] == 0.0)
    teacher_cell = student["teacher_cell"]
    with np.load(out / teacher_cell.replace("teachers/", "teachers/cells/") / "final.npz") as arrays:
        teacher_logits = torch.from_numpy(arrays["train_logits"])[subset]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = build_model("mlp", 10, dataset.in_shape, widths=list(config.student_widths))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.training.lr)
    t, beta = 4.0, config.beta
    for epoch in range(config.student_epochs):
        order = epoch_order(len(dataset.x_train), 1, epoch)
        for start in range(0, len(order), config.training.batch_size):
            index = order[start:start + config.training.batch_size]
            logits = model(dataset.x_train[index])
            soft = F.kl_div(F.log_softmax(logits / t, 1), F.softmax(teacher_logits[index] / t, 1),
                            reduction="batchmean")
            loss = beta * F.cross_entropy(logits, dataset.y_train[index]) + (1 - beta) * t * t * soft
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        test_logits = model(dataset.x_test)
    accuracy = (test_logits.argmax(1) == dataset.y_test).double().mean().item()
    nll = F.cross_entropy(test_logits.double(), dataset.y_test).item()
    assert student["test"]["nll"] == pytest.approx(nll, rel=1e-4)
    assert student["test"]["accuracy"] == pytest.approx(accuracy, abs=1.5 / len(dataset.y_test))


def test_teacher_smoothness_index_is_the_formula_on_its_training_logits(run):
    config, out, results = run
    for record in results["runs"]:
        if record["model"] != "teacher":
            continue
        with np.load(out / record["cell"].replace("teachers/", "teachers/cells/") / "final.npz") as arrays:
            logits, target = arrays["train_logits"].astype(np.float64), arrays["train_target"]
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        expected = 10 / 9 * np.mean(1 - p[np.arange(len(target)), target])
        assert record["smoothness_index"] == pytest.approx(expected, rel=1e-6)


def test_verdicts_are_well_formed_and_name_the_distillation_and_cluster_claims(run):
    _, out, _ = run
    verdicts = json.loads((out / "verdicts.json").read_text())
    assert verdicts == json.loads(re.search(r'id="verdicts-data">(.*?)</script>',
                                            (out / "report.html").read_text()).group(1))
    for verdict in verdicts:
        assert set(FIELDS) <= set(verdict) and verdict["verdict"] in VERDICTS
    assert {v["claim"] for v in verdicts} == {"distillation", "distillation-temperature", "tight-clusters",
                                             "equidistant-clusters"}
    assert {v["source"].split(",")[0] for v in verdicts if v["claim"].startswith("distillation")} == {
        "Müller", "Chandrasegaran et al. 2022"}
    assert all("Shen et al. 2021" in v["source"] for v in verdicts if v["claim"] == "distillation")
    contrasts = [v["contrast"] for v in verdicts]
    assert sum(c.startswith("eps=0.3 student, distilled at T=") for c in contrasts) == 2  # one per temperature
    assert [v["primary"] for v in verdicts if v["claim"] == "distillation-temperature"] == [False, True]
    assert sum(c.startswith("teachers, ") for c in contrasts) == 4  # two claims, train and test


def test_finished_run_is_left_alone_and_another_config_is_refused(run, capsys):
    config, out, results = run
    assert run_distillation(config, out, progress=False) == results
    assert "already complete" in capsys.readouterr().out
    with pytest.raises(RunDirectoryError, match="beta"):
        run_distillation(DistillationConfig.from_dict({**SETTINGS, "beta": 0.5}), out, progress=False)


@pytest.mark.parametrize("settings, match", [
    (dict(label_smoothing=(0.1, 0.2)), "must hold 0"),
    (dict(temperatures=(1.0, 0.0)), "temperatures"),
    (dict(smoothed_temperatures=(-2.0,)), "smoothed_temperatures must be distinct finite numbers > 0"),
    (dict(student_train_size=1), "student_train_size must be None or an integer >= 2"),
    (dict(student_train_size=True), "student_train_size"),
    (dict(student_epochs=0), "student_epochs must be None or an integer >= 1"),
    (dict(beta=1.5), "beta"),
    (dict(student_widths=(0,)), "student_widths"),
    (dict(epochs=0), "epochs"),
])
def test_config_rejects_bad_settings(settings, match):
    with pytest.raises(ValueError, match=match):
        DistillationConfig.from_dict({**SETTINGS, **settings})


def test_command_reports_bad_settings_in_one_line(tmp_path, capsys):
    assert main(["distill", "--dataset", "digits", "--label-smoothing", "0.1", "--out", str(tmp_path / "x")]) == 2
    assert "must hold 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_quick_flag_and_given_flags_override_the_preset():
    parser = __import__("argparse").ArgumentParser()
    distill.add_arguments(parser)
    config = distill.config_from_args(parser.parse_args(["--quick", "--epochs", "2", "--seeds", "5"]))
    assert (config.training.epochs, config.training.seeds, config.teacher_widths, config.student_epochs) == (
        2, (5,), distill.QUICK["teacher_widths"], distill.QUICK["student_epochs"])
    # --quick keeps the protocol: teachers on the whole training split, students on 1,200 images,
    # both teachers at every temperature
    assert (config.training.train_fraction, config.student_train_size) == (1.0, 1200)
    assert config.temperatures == config.smoothed_temperatures == (1.0, 2.0, 4.0, 8.0)
    config = distill.config_from_args(parser.parse_args([]))
    assert config.teacher_widths == (1200, 1200) and config.training.dataset == "fashion-mnist"
    assert (config.student_train_size, config.student_epochs) == (1200, 60)


# the command-line flags of SETTINGS
FLAGS = ["--dataset", "digits", "--teacher-widths", "32", "32", "--student-widths", "16",
         "--label-smoothing", "0", "0.3", "--seeds", "0", "1", "--temperatures", "1", "4",
         "--smoothed-temperatures", "1", "4", "--beta", "0.25", "--epochs", "3", "--batch-size", "64",
         "--lr", "0.01", "--train-fraction", "0.4", "--student-train-size", "150", "--student-epochs", "6"]


@pytest.mark.parametrize("command", [["distill"], ["reproduce", "--quick", "distillation"]])
def test_command_on_the_finished_run_prints_its_summary(run, capsys, command):
    """Also as ``reproduce --quick distillation`` (NAME after an option; the flags given override --quick's)."""
    _, out, _ = run
    assert main([*command, *FLAGS, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "already complete" in printed and "A smoothed teacher distils worse" in printed and "report.html" in printed


@pytest.mark.slow
def test_a_finished_run_without_its_report_gets_it_back(run, tmp_path, capsys):
    _, out, _ = run
    copy = tmp_path / out.name
    shutil.copytree(out, copy)
    (copy / "report.html").unlink()
    assert main(["distill", *FLAGS, "--out", str(copy)]) == 0
    printed = capsys.readouterr().out
    assert "complete but its report is missing; rebuilding the report" in printed
    assert f"Report: {(copy / 'report.html').resolve()}" in printed and (copy / "report.html").is_file()


@pytest.mark.slow
def test_report_command_rebuilds_the_distillation_report(run, tmp_path, capsys):
    _, out, _ = run
    copy = tmp_path / out.name
    shutil.copytree(out, copy)
    (copy / "report.html").unlink()
    assert main(["report", str(copy)]) == 0
    assert "A smoothed teacher distils worse" in capsys.readouterr().out
    page = (copy / "report.html").read_text()
    assert "Knowledge distillation" in page and "Teachers&#x27; penultimate layer" in page
    for name in ("verdicts.json", "summary.txt"):  # the page differs only in its build date and time
        assert (copy / name).read_text() == (out / name).read_text()


# config.json as every version of the lab has written it (one flat object, in this order)
STORED = """{
 "dataset": "digits",
 "data_dir": null,
 "teacher_widths": [
  64
 ],
 "student_widths": [
  32
 ],
 "label_smoothing": [
  0.0,
  0.1
 ],
 "seeds": [
  0,
  1
 ],
 "temperatures": [
  1.0,
  4.0
 ],
 "smoothed_temperatures": [
  1.0
 ],
 "beta": 0.0,
 "epochs": 3,
 "batch_size": 128,
 "optimizer": "adam",
 "lr": 0.001,
 "momentum": 0.9,
 "weight_decay": 0.0,
 "train_fraction": 0.1,
 "data_seed": 0,
 "eval_batch_size": 1000,
 "device": "cpu"
}
"""


def test_a_stored_config_is_read_and_written_back_unchanged(tmp_path):
    config = DistillationConfig.from_dict(json.loads(STORED))
    assert config.training == SweepConfig(dataset="digits", models=("mlp",), label_smoothing=(0.0, 0.1),
                                          seeds=(0, 1), epochs=3, batch_size=128, optimizer="adam", lr=0.001,
                                          train_fraction=0.1, eval_batch_size=1000)
    assert (config.teacher_widths, config.temperatures, config.beta) == ((64,), (1.0, 4.0), 0.0)
    # written back as stored, with the keys added since at their old values (the students trained on the
    # teachers' images, for the teachers' epochs)
    assert json.dumps(config.to_dict(), indent=1) + "\n" == json.dumps(
        {**json.loads(STORED), "remap_labels": False, "student_train_size": None, "student_epochs": None},
        indent=1) + "\n"
    # a run directory holding that config.json is this run's (resumed, not refused)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(STORED)
    assert open_run_directory(tmp_path / "run", config.to_dict()) is None


def test_training_must_leave_the_models_to_the_widths():
    with pytest.raises(ValueError, match="training must be a SweepConfig"):
        DistillationConfig(training=SweepConfig(label_smoothing=(0.0, 0.1)))
    with pytest.raises(ValueError, match="training must be a SweepConfig"):
        DistillationConfig(training=SweepConfig(models=("mlp",), label_smoothing=(0.0, 0.1), shard="1/2"))


@pytest.mark.parametrize("size", ["5", "576"])
def test_a_student_subset_the_data_cannot_hold_is_refused_in_one_line_before_anything_is_written(
        tmp_path, capsys, size):
    """digits at train_fraction 0.4: 10 classes, 575 training images for the teachers."""
    assert main(["distill", *FLAGS, "--student-train-size", size, "--out", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err
    assert error == (f"labelsmooth distill: error: student_train_size must be from 10 (one image per class of "
                     f"digits) to 575 (the teachers' training images), got {size}\n")
    assert not (tmp_path / "x").exists()


def test_a_run_interrupted_while_distilling_resumes_without_retraining_the_sweeps(run, tmp_path, capsys):
    """The sweeps finished, the distilled students not (no results.json): the rerun trains the
    distilled students again (same numbers) and leaves the teachers' and students' sweeps alone."""
    config, out, results = run
    copy = tmp_path / out.name
    shutil.copytree(out, copy)
    for name in ("results.json", "report.html", "summary.txt", "verdicts.json"):
        (copy / name).unlink()
    sweeps = {p: p.stat().st_mtime_ns for p in copy.glob("*/cells/*/final.npz")}
    assert len(sweeps) == 8  # 4 teachers and 4 students trained directly
    resumed = run_distillation(config, copy, progress=False)
    assert {p: p.stat().st_mtime_ns for p in copy.glob("*/cells/*/final.npz")} == sweeps
    assert "already complete" in capsys.readouterr().out  # said by each sweep
    assert [r["cell"] for r in resumed["runs"]] == [r["cell"] for r in results["runs"]]
    for new, old in zip(resumed["runs"], results["runs"]):
        assert new["test"]["accuracy"] == pytest.approx(old["test"]["accuracy"], abs=1e-9)
        assert new["test"]["nll"] == pytest.approx(old["test"]["nll"], rel=1e-5)
    assert (copy / "report.html").is_file() and (copy / "verdicts.json").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not (DEFAULT_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason=f"Fashion-MNIST is not installed in {DEFAULT_FASHION_MNIST_DIR}")
def test_on_fashion_mnist_the_teachers_see_the_whole_training_split_and_the_students_a_subset(tmp_path):
    config = DistillationConfig.from_dict(dict(
        dataset="fashion-mnist", teacher_widths=(32,), student_widths=(16,), label_smoothing=(0.0, 0.1),
        seeds=(0, 1), temperatures=(1.0, 8.0), smoothed_temperatures=(1.0, 8.0), epochs=1, batch_size=256,
        student_train_size=300, student_epochs=3))
    results = run_distillation(config, tmp_path / "run", progress=False)
    sizes = {folder: json.loads((tmp_path / "run" / folder / "config.json").read_text())["split_sizes"]
             for folder in ("teachers", "students")}
    assert sizes["teachers"]["train"] == 54_000 and sizes["students"]["train"] == 300
    assert sizes["teachers"]["validation"] == sizes["students"]["validation"] == 6_000
    assert sum(r["model"].startswith("student, distilled") for r in results["runs"]) == 8
    verdicts = json.loads((tmp_path / "run" / "verdicts.json").read_text())
    assert {"distillation", "distillation-temperature"} <= {v["claim"] for v in verdicts}
