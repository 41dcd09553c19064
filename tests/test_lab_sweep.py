"""lab.sweep (with lab.cells): vectorised cells == cells trained alone with torch.optim,
determinism, resume after a kill, run-directory rules, CLI outputs. Short runs on digits; one
Fashion-MNIST run when installed.

The reference trainer below is written from the definitions: an ordinary ``nn.Module`` per cell,
``torch.optim``, torch's ``F.cross_entropy`` against explicit smoothed soft targets, and
torchmetrics' calibration error. Tests run torch on one thread (restored afterwards): CI runs two
test workers on two cores, and more threads than cores make torch's OpenMP kernels crawl.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

from labelsmooth.cli import main
from labelsmooth.lab import sweep
from labelsmooth.lab.cells import epoch_order
from labelsmooth.lab.config import SweepConfig, grid_cells
from labelsmooth.lab.data import DEFAULT_FASHION_MNIST_DIR, load_dataset
from labelsmooth.lab.models import build_model
from labelsmooth.lab.sweep import run_sweep

SMALL = dict(dataset="digits", train_fraction=0.3, epochs=2, batch_size=32, lr=0.05)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_report(monkeypatch):
    """Skip the (slow, separately tested) report; record that the sweep asked for it."""
    calls = []
    monkeypatch.setattr(sweep, "build_report", lambda run_dir: calls.append(Path(run_dir)))
    return calls


def reference_loss(logits, target, eps, distribution):
    """Cross-entropy against the smoothed target q' = (1 - eps) onehot + eps u, as soft targets
    (torch's own label_smoothing= would ignore a negative eps)."""
    k = logits.shape[1]
    onehot = F.one_hot(target, k).to(logits.dtype)
    u = torch.full_like(onehot, 1 / k) if distribution == "uniform" else (1 - onehot) / (k - 1)
    return F.cross_entropy(logits, (1 - eps) * onehot + eps * u, reduction="none")


def reference_metrics(logits, target, eps, distribution):
    return {"loss": reference_loss(logits, target, eps, distribution).mean().item(),
            "nll": F.cross_entropy(logits, target).item(),
            "accuracy": (logits.argmax(1) == target).double().mean().item(),
            "ece": multiclass_calibration_error(logits.softmax(1), target, logits.shape[1], n_bins=15,
                                                norm="l1").item()}


def train_alone(config: SweepConfig, cell, ds):
    """One cell with an ordinary module and torch.optim; returns (model, history, weights of the
    epoch with the lowest validation NLL, that epoch)."""
    torch.manual_seed(cell.seed)
    model = build_model(cell.model, ds.num_classes, ds.in_shape, **config.model_options.get(cell.model, {}))
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                              weight_decay=config.weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history, best = [], (float("inf"), None, 0)
    for epoch in range(config.epochs):
        order, total = epoch_order(len(ds.x_train), cell.seed, epoch), 0.0
        for start in range(0, len(order), config.batch_size):
            index = order[start:start + config.batch_size]
            rows = reference_loss(model(ds.x_train[index]), ds.y_train[index], cell.label_smoothing,
                                  cell.distribution)
            opt.zero_grad()
            rows.mean().backward()
            opt.step()
            total += rows.sum().item()
        with torch.no_grad():
            val = reference_metrics(model(ds.x_holdout), ds.y_holdout, cell.label_smoothing, cell.distribution)
        history.append({"epoch": epoch + 1, "train_loss": total / len(order),
                        **{f"val_{k}": v for k, v in val.items()}})
        if val["nll"] < best[0]:
            best = (val["nll"], copy.deepcopy(model.state_dict()), epoch + 1)
    return model, history, best[1], best[2]


def without_provenance(results: dict) -> dict:
    """results.json without its provenance (date and wall time differ between two runs)."""
    return {k: v for k, v in results.items() if k != "provenance"}


# Tolerance: the reference computes the loss with torch's soft-target cross-entropy and each
# cell's convolutions alone; the sweep uses labelsmooth.cross_entropy and grouped convolutions,
# whose backward sums the same products in another order. Float32 rounding (~1e-7 relative per
# operation) compounds over the steps; two epochs stay far below 1e-4 (measured: < 2e-7 on the
# weights), while any real difference (a wrong gradient, a shared momentum buffer, a wrong eps or
# batch) moves the weights by orders of magnitude more.
WEIGHT_TOLERANCE = dict(rtol=1e-4, atol=1e-5)
METRIC_TOLERANCE = dict(rel=1e-4, abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("settings", [
    dict(models=("seed-cnn",), optimizer="sgd", momentum=0.9, weight_decay=1e-3,
         label_smoothing=(0.0, 0.2), distributions=("uniform", "non_target"), seeds=(0, 1)),
    dict(models=("mlp",), model_options={"mlp": {"widths": [32]}}, optimizer="adam", lr=3e-3,
         weight_decay=1e-4, label_smoothing=(0.0, -0.1, 0.3), seeds=(2,)),
    dict(models=("resnet",), model_options={"resnet": {"width": 8}}, optimizer="sgd", momentum=0.5,
         label_smoothing=(0.1,), seeds=(0,), epochs=1),
])
def test_vectorised_sweep_equals_cells_trained_alone(tmp_path, no_report, settings):
    config = SweepConfig(**{**SMALL, **settings})
    results = run_sweep(config, tmp_path / "run", progress=False)
    ds = load_dataset(config.dataset, train_fraction=config.train_fraction, seed=config.data_seed)
    assert results["complete"] and no_report == [tmp_path / "run"]
    for cell, run in zip(grid_cells(config), results["runs"]):
        model, history, best, best_epoch = train_alone(config, cell, ds)
        weights = torch.load(tmp_path / "run" / "cells" / cell.key / "model.pt", weights_only=True)
        for name, value in model.state_dict().items():
            torch.testing.assert_close(weights[name], value, **WEIGHT_TOLERANCE, msg=f"{cell.key} {name}")
        assert len(run["history"]) == len(history)
        for got, want in zip(run["history"], history):
            assert got == pytest.approx(want, **METRIC_TOLERANCE), cell.key
        with torch.no_grad():
            test = reference_metrics(model(ds.x_test), ds.y_test, cell.label_smoothing, cell.distribution)
            model.load_state_dict(best)
            early = reference_metrics(model(ds.x_test), ds.y_test, cell.label_smoothing, cell.distribution)
        assert run["test"] == pytest.approx(test, **METRIC_TOLERANCE)
        assert run["early_stopped"]["epoch"] == best_epoch
        assert run["early_stopped"]["test"] == pytest.approx(early, **METRIC_TOLERANCE)


def test_final_files_follow_the_contract(tmp_path, no_report):
    config = SweepConfig(**SMALL, label_smoothing=(0.0, 0.1))
    run_sweep(config, tmp_path / "run", progress=False)
    ds = load_dataset("digits", train_fraction=0.3)
    for cell in grid_cells(config):
        folder = tmp_path / "run" / "cells" / cell.key
        with np.load(folder / "final.npz", allow_pickle=False) as final:
            arrays = dict(final)
        for split in ("test", "holdout", "train"):
            x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
            assert arrays[f"{split}_logits"].shape == (len(x), 10)
            if split != "train":
                assert arrays[f"early_{split}_logits"].shape == (len(x), 10)
            assert arrays[f"{split}_logits"].dtype == np.float32
            assert arrays[f"{split}_target"].dtype == np.int64
            np.testing.assert_array_equal(arrays[f"{split}_target"], y.numpy())
        model = build_model("seed-cnn", 10, ds.in_shape)
        model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
        with torch.no_grad():
            np.testing.assert_allclose(model(ds.x_test).numpy(), arrays["test_logits"], rtol=1e-5, atol=1e-5)
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert rows[0] == ("cell,model,distribution,label_smoothing,label_noise,seed,epoch,train_loss,val_loss,"
                       "val_nll,val_accuracy,val_ece")
    assert len(rows) == 1 + 2 * 2
    sizes = {"train": len(ds.x_train), "validation": len(ds.x_holdout), "test": len(ds.x_test)}
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored == {**config.to_dict(), "split_sizes": sizes}
    assert stored["validation_split"] == "holdout" and stored["preset"] is None and stored["quick"] is False
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_the_test_split_is_read_only_after_the_last_epoch(tmp_path, no_report, monkeypatch):
    """Count every evaluation of the test images: two per model (final weights and the weights of
    the epoch chosen on validation), both after training ended; per-epoch metrics come from the
    validation split."""
    from labelsmooth.lab.cells import CellGroup

    loaded = {}
    real_load = sweep.load_run_dataset
    monkeypatch.setattr(sweep, "load_run_dataset", lambda *a, **k: loaded.setdefault("ds", real_load(*a, **k)))
    reads = []
    real_logits = CellGroup.logits

    def counting_logits(self, x, batch_size):
        split = next(name for name in ("test", "holdout", "train")
                     if x.data_ptr() == getattr(loaded["ds"], f"x_{name}").data_ptr())
        reads.append((split, self.cells[0].model, self.epochs_done))
        return real_logits(self, x, batch_size)

    monkeypatch.setattr(CellGroup, "logits", counting_logits)
    monkeypatch.setattr(CellGroup, "cell_logits", lambda *a: pytest.fail("cell_logits reads a split again"))
    config = SweepConfig(**{**SMALL, "epochs": 3}, models=("seed-cnn", "mlp"), label_smoothing=(0.0, 0.1))
    run_sweep(config, tmp_path / "run", progress=False)
    test_reads = [(model, epochs) for split, model, epochs in reads if split == "test"]
    assert test_reads == [("seed-cnn", 3), ("seed-cnn", 3), ("mlp", 3), ("mlp", 3)]
    per_epoch = [epochs for split, model, epochs in reads if split == "holdout" and model == "mlp"]
    assert per_epoch[:3] == [1, 2, 3]


@pytest.mark.slow
def test_same_seed_gives_bit_identical_results(tmp_path, no_report):
    config = SweepConfig(**SMALL, label_smoothing=(0.0, 0.1), seeds=(3,))
    first = run_sweep(config, tmp_path / "a", progress=False)
    second = run_sweep(config, tmp_path / "b", progress=False)
    assert without_provenance(first) == without_provenance(second)
    for cell in grid_cells(config):
        a, b = (np.load(tmp_path / d / "cells" / cell.key / "final.npz") for d in "ab")
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
    eps0, eps1 = first["runs"]
    assert eps0["history"] != eps1["history"]  # the cells really differ


@pytest.mark.parametrize("options", [dict(momentum=0.9), dict(momentum=0.9, weight_decay=1e-3, dampening=0.1),
                                     dict(momentum=0.0, weight_decay=1e-2), dict(momentum=0.5, nesterov=True)],
                         ids=["momentum", "weight-decay-dampening", "no-momentum", "nesterov"])
def test_the_sweeps_sgd_step_is_torchs_bit_for_bit(options):
    """The sweep's foreach SGD step against torch.optim.SGD.step on the same gradients, four steps
    (the first creates the momentum buffers); a parameter without a gradient is left alone."""
    from labelsmooth.lab.cells import optimizer_step

    g = torch.Generator().manual_seed(0)
    ours = [torch.randn(shape, generator=g).requires_grad_() for shape in [(3, 4, 5), (3, 7), (2,)]]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    sgd_ours, sgd_theirs = (torch.optim.SGD(params, lr=0.05, **options) for params in (ours, theirs))
    for step in range(4):
        for i, (a, b) in enumerate(zip(ours, theirs)):
            grad = torch.randn(a.shape, generator=g) if i < 2 or step % 2 else None
            a.grad, b.grad = (None, None) if grad is None else (grad.clone(), grad.clone())
        optimizer_step(sgd_ours)
        sgd_theirs.step()
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b)
    for a, b in zip(ours, theirs):
        assert set(sgd_ours.state[a]) == set(sgd_theirs.state[b])
        if options["momentum"]:
            assert torch.equal(sgd_ours.state[a]["momentum_buffer"], sgd_theirs.state[b]["momentum_buffer"])


@pytest.mark.parametrize("model", ["seed-cnn", "mlp"])
def test_evaluation_chunks_give_each_cell_its_own_logits_bit_for_bit(model):
    """CellGroup.logits evaluates all cells per chunk of images (on the CPU, chunks the model
    sizes); each cell's logits are what that cell alone gives on the whole split in one chunk."""
    from labelsmooth.lab.cells import CellGroup

    config = SweepConfig(**{**SMALL, "models": (model,)}, label_smoothing=(0.0, 0.1, 0.2), seeds=(0, 1, 2, 3))
    ds = load_dataset("digits", train_fraction=0.3)
    cells = grid_cells(config)
    group = CellGroup.create(config, sorted(cells, key=lambda c: c.seed), ds, torch.device("cpu"))
    together = group.logits(ds.x_holdout, 500)
    assert together.shape == (12, len(ds.x_holdout), ds.num_classes)
    for index in range(len(group.cells)):
        alone = group.stacked.cell(index)
        with torch.no_grad():
            torch.testing.assert_close(together[index], alone(ds.x_holdout), rtol=1e-5, atol=1e-5)
        assert torch.equal(together[index], group.cell_logits(index, ds.x_holdout, len(ds.x_holdout)))


def recorded_epochs(out: Path) -> tuple[int, bool]:
    try:
        results = json.loads((out / "results.json").read_text())
    except (OSError, json.JSONDecodeError):  # not written yet
        return 0, False
    return len(results["runs"][0]["history"]), results["complete"]


# A sweep long enough to be interrupted mid-way (20 epochs), as a command and as its config.
LONG_EPOCHS = 20
LONG_ARGS = ["sweep", "--dataset", "digits", "--train-fraction", "0.5", "--label-smoothing", "0", "0.1",
             "--epochs", str(LONG_EPOCHS), "--lr", "0.05", "--threads", "1", "--no-progress"]
LONG_CONFIG = SweepConfig(dataset="digits", train_fraction=0.5, label_smoothing=(0.0, 0.1), epochs=LONG_EPOCHS,
                          lr=0.05)


def start_sweep(out: Path, args: list[str] = LONG_ARGS) -> subprocess.Popen:
    """A sweep in a new process, once it has recorded two epochs."""
    process = subprocess.Popen([sys.executable, "-m", "labelsmooth", *args, "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while recorded_epochs(out)[0] < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    return process


def assert_resumes_to_the_uninterrupted_run(interrupted: Path, tmp_path: Path, capsys) -> None:
    done, complete = recorded_epochs(interrupted)
    assert 2 <= done < LONG_EPOCHS and not complete, "the sweep was not interrupted mid-way"
    assert (interrupted / "checkpoint.pt").is_file()
    resumed = run_sweep(LONG_CONFIG, interrupted, progress=False)
    assert "resuming" in capsys.readouterr().out
    uninterrupted = run_sweep(LONG_CONFIG, tmp_path / "uninterrupted", progress=False)
    assert resumed["complete"] and without_provenance(resumed) == without_provenance(uninterrupted)
    assert without_provenance(json.loads((interrupted / "results.json").read_text())) == \
        without_provenance(uninterrupted)
    assert resumed["provenance"]["wall_seconds"] > 0
    for cell in resumed["runs"]:
        x, y = (np.load(d / "cells" / cell["cell"] / "final.npz")
                for d in (interrupted, tmp_path / "uninterrupted"))
        for key in x.files:
            np.testing.assert_array_equal(x[key], y[key])
    assert not list(interrupted.rglob(".*.tmp")) and not (interrupted / ".lock").exists()


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted_run(tmp_path, no_report, capsys):
    """SIGKILL a sweep process after its second epoch, resume it, compare with an uninterrupted run.
    The killed writer's lock file and temporary files (as a kill mid-write leaves them) are left
    behind; the resume is not blocked and removes them."""
    out = tmp_path / "interrupted"
    process = start_sweep(out)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (out / ".lock").read_text() == str(process.pid)
    key = grid_cells(LONG_CONFIG)[0].key
    (out / "cells" / key).mkdir(parents=True, exist_ok=True)
    for temporary in (out / f".results.json.{process.pid}.tmp", out / "cells" / key / f".final.npz.{process.pid}.tmp"):
        temporary.write_bytes(b"half")
    assert_resumes_to_the_uninterrupted_run(out, tmp_path, capsys)


@pytest.mark.slow
def test_ctrl_c_prints_one_resume_line_and_the_rerun_finishes_the_same_run(tmp_path, no_report, capsys):
    out = tmp_path / "interrupted"
    process = start_sweep(out)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert stderr.strip().splitlines() == [
        f"Interrupted; finished epochs are saved in {out}. Run the same command to resume."]
    assert_resumes_to_the_uninterrupted_run(out, tmp_path, capsys)


@pytest.mark.slow
def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    endless = [*LONG_ARGS, "--epochs", "100000"]  # still training when the second one tries
    first = start_sweep(out, endless)
    try:
        second = subprocess.run([sys.executable, "-m", "labelsmooth", *endless, "--out", str(out)],
                                capture_output=True, text=True, timeout=120)
        assert first.poll() is None
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2 and second.stderr.splitlines() == [
        f"labelsmooth sweep: error: {out} is being written by process {first.pid}; wait for it to finish, "
        f"or choose another --out"]


@pytest.mark.slow
def test_a_run_killed_while_writing_its_report_gets_it_on_rerun(tmp_path, capsys):
    out = tmp_path / "run"
    kill_in_report = ("import os, signal\nfrom labelsmooth.lab import sweep\n"
                      "sweep.build_report = lambda out: os.kill(os.getpid(), signal.SIGKILL)\n"
                      f"from labelsmooth.cli import main\nmain({cli_args(out)!r})")
    assert subprocess.run([sys.executable, "-c", kill_in_report], timeout=120).returncode == -signal.SIGKILL
    assert json.loads((out / "results.json").read_text())["complete"]
    assert not any((out / name).exists() for name in ("report.html", "verdicts.json", "summary.txt"))
    assert main(cli_args(out)) == 0
    printed = capsys.readouterr().out
    assert "complete but its report is missing; rebuilding the report" in printed
    reports = [Path(line.removeprefix("Report: ")) for line in printed.splitlines() if line.startswith("Report: ")]
    assert reports == [out / "report.html"] and reports[0].is_file()
    assert json.loads((out / "verdicts.json").read_text()) and (out / "summary.txt").is_file()
    assert main(cli_args(out)) == 0 and "already complete" in capsys.readouterr().out


def test_a_diverging_cell_stops_and_leaves_its_neighbours_numbers_unchanged(tmp_path, no_report, capsys,
                                                                            monkeypatch):
    """eps = -1e6 drives the loss to -inf within the first epoch; the eps = 0 cell trained beside it
    must end exactly as it does beside an ordinary eps = 0.1 cell (the stacking is the same)."""
    settings = dict(SMALL, models=("mlp",), model_options={"mlp": {"widths": [32]}}, epochs=3)
    out = tmp_path / "run"
    message = r"^training diverged: cell mlp-uniform-eps-1e\+06-seed0 at epoch 1 \(train_loss nan\)\."
    with pytest.raises(sweep.DivergenceError, match=message + ".*lower learning rate than --lr 0.05"):
        run_sweep(SweepConfig(**settings, label_smoothing=(0.0, -1e6)), out, progress=False)
    results = json.loads((out / "results.json").read_text())
    neighbour = run_sweep(SweepConfig(**settings, label_smoothing=(0.0, 0.1)), tmp_path / "reference",
                          progress=False)["runs"][0]
    assert results["complete"] is False and no_report == [tmp_path / "reference"]
    kept, diverged = results["runs"]
    assert (kept["history"], kept["test"], kept["early_stopped"]) == (
        neighbour["history"], neighbour["test"], neighbour["early_stopped"]) and "diverged" not in kept
    assert (diverged["diverged"], diverged["history"], diverged["test"], diverged["early_stopped"]) == (
        {"epoch": 1, "reason": "train_loss nan"}, [], None, None)
    assert sorted(p.name for p in (out / "cells").iterdir()) == [kept["cell"]]
    # the rerun repeats the verdict without training again
    monkeypatch.setattr(sweep.CellGroup, "train_epoch", lambda *args: pytest.fail("trained again"))
    with pytest.raises(sweep.DivergenceError, match=message):
        run_sweep(SweepConfig(**settings, label_smoothing=(0.0, -1e6)), out, progress=False)


def cli_args(out: Path, epochs: int = 2) -> list[str]:
    return ["sweep", "--dataset", "digits", "--train-fraction", "0.3", "--epochs", str(epochs),
            "--label-smoothing", "0", "0.1", "--no-progress", "--out", str(out)]


def snapshot(folder: Path) -> dict:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_cli_outputs_complete_rerun_and_refusal(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(cli_args(out)) == 0
    for name in ("config.json", "results.json", "metrics.csv", "report.html"):
        assert (out / name).is_file(), name
    assert "report.html" in capsys.readouterr().out
    before = snapshot(out)

    assert main(cli_args(out)) == 0  # same config, finished: nothing retrained or rewritten
    assert "already complete" in capsys.readouterr().out
    assert snapshot(out) == before

    assert main(cli_args(out, epochs=3)) == 2  # different config: refused
    error = capsys.readouterr().err
    assert "different sweep" in error and "epochs: 2 -> 3" in error
    assert snapshot(out) == before


def test_refuses_a_non_empty_directory_that_is_no_sweep(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(cli_args(tmp_path)) == 2
    assert "not a sweep's run directory" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_resume_of_a_run_without_checkpoint_starts_over(tmp_path, no_report, capsys):
    """A run killed before its first checkpoint has only config.json: it starts from epoch 1."""
    config = SweepConfig(**SMALL, label_smoothing=(0.0,))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(config.to_dict()))
    results = run_sweep(config, tmp_path / "run", progress=False)
    assert without_provenance(results) == without_provenance(run_sweep(config, tmp_path / "fresh", progress=False))


@pytest.mark.slow
@pytest.mark.fashion_mnist
def test_fashion_mnist_end_to_end(tmp_path, no_report):
    if not (DEFAULT_FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not installed at {DEFAULT_FASHION_MNIST_DIR} "
                    "(apt-get install dataset-fashion-mnist)")
    config = SweepConfig(dataset="fashion-mnist", train_fraction=0.02, epochs=2, lr=0.05,
                         label_smoothing=(0.0, 0.1))
    results = run_sweep(config, tmp_path / "run", progress=False)
    assert results["complete"] and [len(r["history"]) for r in results["runs"]] == [2, 2]
    for run in results["runs"]:
        assert run["test"]["accuracy"] > 0.4  # chance is 0.1
        final = np.load(tmp_path / "run" / "cells" / run["cell"] / "final.npz")
        assert final["test_logits"].shape == (10000, 10) and final["train_logits"].shape == (1200, 10)


@pytest.mark.slow
def test_bad_model_for_the_data_leaves_no_run_directory(tmp_path, capsys):
    np.savez(tmp_path / "flat.npz", x=np.random.default_rng(0).normal(size=(60, 5)), y=np.arange(60) % 3)
    out = tmp_path / "run"
    args = ["sweep", "--dataset", str(tmp_path / "flat.npz"), "--epochs", "1", "--no-progress",
            "--out", str(out)]
    assert main(args + ["--model", "seed-cnn"]) == 2
    assert "in_shape must be (channels, height, width) for seed-cnn" in capsys.readouterr().err
    assert not out.exists()
    assert main(args + ["--model", "mlp", "--mlp-widths", "8"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and set(results["runs"][0]["test"]) == {"loss", "nll", "accuracy", "ece"}


def test_labels_that_skip_classes_are_refused_or_remapped_and_recorded(tmp_path, no_report, capsys):
    y = np.array([0, 2, 5] * 20)
    np.savez(tmp_path / "gaps.npz", x=np.random.default_rng(0).normal(size=(60, 5)), y=y)
    out = tmp_path / "run"
    args = ["sweep", "--dataset", str(tmp_path / "gaps.npz"), "--model", "mlp", "--mlp-widths", "8", "--epochs",
            "1", "--label-smoothing", "0", "0.1", "--no-progress", "--out", str(out)]
    assert main(args) == 2
    assert "got labels [0, 2, 5] (3 distinct)" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--remap-labels"]) == 0
    assert "labels [0, 2, 5] are classes 0..2" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["remap_labels"] is True
    results = json.loads((out / "results.json").read_text())
    assert results["original_labels"] == [0, 2, 5] and results["complete"]
    final = np.load(out / "cells" / results["runs"][0]["cell"] / "final.npz")
    assert final["test_logits"].shape[1] == 3 and set(final["test_target"].tolist()) == {0, 1, 2}


@pytest.mark.slow
def test_class_names_holding_mathtext_reach_the_figures_as_written(tmp_path, capsys):
    """Matplotlib would parse '$...$' as mathtext and fail on '$\\frac{1}$' while drawing the
    penultimate-layer figure, after training."""
    names = np.array([r"$\frac{1}$", "costs $5", "c"])
    np.savez(tmp_path / "named.npz", x=np.random.default_rng(0).normal(size=(90, 5)), y=np.arange(90) % 3,
             class_names=names)
    out = tmp_path / "run"
    assert main(["sweep", "--dataset", str(tmp_path / "named.npz"), "--model", "mlp", "--mlp-widths", "8",
                 "--epochs", "1", "--label-smoothing", "0", "0.1", "--no-progress", "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert list(out.glob("penultimate_*.png")) and r"$\frac{1}$, costs $5, c: penultimate activations" in page


@pytest.mark.parametrize("later_keys", [("remap_labels",), ()], ids=["before-remap-labels", "with-remap-labels"])
def test_a_run_directory_of_the_older_lab_is_neither_resumed_nor_overwritten(tmp_path, capsys, later_keys):
    """A config.json without "validation_split" was written before the lab kept one: its
    per-epoch metrics came from the test split, so resuming it would mix two meanings. So too
    when it already records remap_labels (the label check came before the validation split)."""
    out = tmp_path / "old"
    out.mkdir()
    old_config = {k: v for k, v in SweepConfig(**SMALL).to_dict().items()
                  if k not in ("validation_split", "preset", "quick", *later_keys)}
    (out / "config.json").write_text(json.dumps(old_config))
    before = snapshot(out)
    assert main(cli_args(out)) == 2
    assert "older version of the lab" in capsys.readouterr().err
    assert snapshot(out) == before


def test_a_run_directory_from_before_remap_labels_resumes(tmp_path, no_report, capsys):
    """A config.json with the validation split but without remap_labels (added later) is the same
    sweep as one with remap_labels false: it resumes."""
    config = SweepConfig(**SMALL, label_smoothing=(0.0,))
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({k: v for k, v in config.to_dict().items() if k != "remap_labels"}))
    results = run_sweep(config, out, progress=False)
    assert results["complete"] and no_report == [out]
    assert without_provenance(results)["runs"] == run_sweep(config, tmp_path / "fresh", progress=False)["runs"]


def test_the_lock_is_held_while_the_report_and_verdicts_are_written(tmp_path, monkeypatch, capsys):
    """The report, verdicts.json and summary.txt are the run's last writes: inside the lock, both
    when the sweep ends and when a rerun rebuilds a missing report."""
    out = tmp_path / "run"
    holders = []
    monkeypatch.setattr(sweep, "build_report", lambda run_dir: holders.append((Path(run_dir) / ".lock").read_text()))
    config = SweepConfig(**SMALL, label_smoothing=(0.0,))
    run_sweep(config, out, progress=False)
    run_sweep(config, out, progress=False)  # the report is still missing: rebuilt
    assert "report is missing; rebuilding" in capsys.readouterr().out
    assert holders == [str(os.getpid())] * 2 and not (out / ".lock").exists()
