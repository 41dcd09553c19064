"""The ``labelsmooth`` command as a user meets it, each case in its own process: a bad argument,
file or machine gives exactly one line on stderr naming the argument or file, and exit status 2
(never a traceback); ``--version``; a lab command without the lab's extras; options are never
abbreviated and a typo gets a suggestion; ``reproduce`` finds NAME wherever it stands.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import labelsmooth
from labelsmooth import cli

TINY = ["--dataset", "digits", "--model", "mlp", "--mlp-widths", "8", "--epochs", "1", "--label-smoothing", "0",
        "--threads", "1", "--no-progress"]


def labelsmooth_cli(*args: str, cwd: Path | None = None, setup: str = "", limits=None) -> subprocess.CompletedProcess:
    """``python -m labelsmooth ARGS`` in a new process (``setup``: Python run first, in that process)."""
    code = f"{setup}\nfrom labelsmooth.cli import main\nraise SystemExit(main({list(args)!r}))"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                          preexec_fn=limits, env={**os.environ, "OMP_NUM_THREADS": "1"})


def one_line_error(process: subprocess.CompletedProcess, pattern: str) -> str:
    """Assert exit status 2 and a stderr of exactly one line matching ``pattern``; return that line."""
    lines = process.stderr.strip().splitlines()
    assert process.returncode == 2, process.stderr
    assert len(lines) == 1, process.stderr
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("files")
    x = np.random.default_rng(0).normal(size=(60, 5)).astype(np.float32)
    np.savez(folder / "good.npz", x=x, y=np.arange(60) % 3)
    whole = (folder / "good.npz").read_bytes()
    (folder / "truncated.npz").write_bytes(whole[:len(whole) // 2])
    (folder / "run").mkdir()
    (folder / "run" / "results.json").write_text('{"runs": [')
    np.savez(folder / "logits.npz", logits=x[:, :3], target=np.arange(60) % 3)
    (folder / "a-file").write_text("not a folder")
    return folder


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch that sees no GPU")
def test_cuda_without_a_gpu(tmp_path):
    one_line_error(labelsmooth_cli("sweep", *TINY, "--device", "cuda", "--out", str(tmp_path / "r")),
                   r"^labelsmooth sweep: error: device: .* got 'cuda', .*no CUDA GPU")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
@pytest.mark.parametrize("args, pattern", [
    (["sweep", "--device", "gpu0"], r"^labelsmooth sweep: error: device must be a torch device .* got 'gpu0'$"),
    (["sweep", "--threads", "0"], r"^labelsmooth sweep: error: argument --threads: expected an integer >= 1, got '0'$"),
    (["demo", "--threads", "0"], r"^labelsmooth demo: error: argument --threads: expected an integer >= 1"),
    (["sweep", "--dataset", "{files}/truncated.npz"], r"^labelsmooth sweep: error: cannot read \S*truncated\.npz "),
    (["sweep", "--out", "{files}/a-file/run"],
     r"^labelsmooth sweep: error: cannot create the run directory \S*a-file/run: Not a directory$"),
    (["report", "{files}/run"], r"^labelsmooth report: error: cannot read \S*run/results\.json as JSON"),
    (["sweep", "--lr", "inf"], r"^labelsmooth sweep: error: lr must be a finite number > 0, got inf$"),
    (["sweep", "--weight-decay", "inf"], r"^labelsmooth sweep: error: weight_decay must be a finite number >= 0"),
    (["sweep", "--epoch", "2"],
     r"^labelsmooth sweep: error: unrecognized arguments: --epoch 2 \(did you mean --epochs\?\)$"),
    (["swep"], r"^labelsmooth: error: argument COMMAND: invalid choice: 'swep' .*\(did you mean sweep\?\)$"),
    (["reproduce", "overfiting"], r"invalid choice: 'overfiting' .*\(did you mean overfitting\?\)$"),
])
def test_bad_arguments_and_files_are_one_line(files, tmp_path, args, pattern):
    args = [a.format(files=files) for a in args]
    if args[0] == "sweep":  # the case's own flags come last, so they win
        args = [args[0], *TINY, "--out", str(tmp_path / "r"), *args[1:]]
    one_line_error(labelsmooth_cli(*args, cwd=tmp_path), pattern)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_calibrate_out_that_cannot_be_written(files):
    process = labelsmooth_cli("calibrate", str(files / "logits.npz"), "--n-resamples", "5",
                              "--out", str(files / "a-file" / "plots"))
    one_line_error(process, r"^labelsmooth calibrate: error: --out: cannot write \S*a-file/plots/reliability\.png")


@pytest.mark.slow
def test_a_write_that_fails_during_a_checkpoint_names_the_file_and_resumes(tmp_path):
    """A file-size limit makes writing the checkpoint fail as a full disk would (EFBIG instead of ENOSPC)."""
    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    args = ["sweep", "--dataset", "digits", "--model", "mlp", "--mlp-widths", "64", "--epochs", "2",
            "--label-smoothing", "0", "--threads", "1", "--no-progress", "--out", str(tmp_path / "r")]
    one_line_error(labelsmooth_cli(*args, limits=small_files),
                   r"^labelsmooth sweep: error: cannot write \S*r/checkpoint\.pt: ")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["config.json"]  # no temporary file, no lock
    assert cli.main(args) == 0  # room again: the same command finishes the run
    assert json.loads((tmp_path / "r" / "results.json").read_text())["complete"]


@pytest.mark.slow
def test_divergence_is_one_line_naming_cell_epoch_and_learning_rate(tmp_path):
    process = labelsmooth_cli("sweep", *TINY, "--lr", "1e30", "--out", str(tmp_path / "r"))
    one_line_error(process, r"^labelsmooth sweep: error: training diverged: cell mlp-uniform-eps0-seed0 at epoch 1 "
                            r"\(train_loss nan\)\..* not complete; try a lower learning rate than --lr 1e\+30")
    assert json.loads((tmp_path / "r" / "results.json").read_text())["complete"] is False


@pytest.mark.slow
def test_version():
    process = labelsmooth_cli("--version")
    assert (process.returncode, process.stdout) == (0, f"labelsmooth {labelsmooth.__version__}\n")


@pytest.mark.slow
def test_a_lab_command_without_the_lab_extras_names_the_extra():
    # (torch itself warns on import that it found no NumPy; that warning is torch's, not the lab's)
    setup = ("import sys, warnings; sys.modules['numpy'] = None\n"
             "warnings.filterwarnings('ignore', message='Failed to initialize NumPy')")
    process = labelsmooth_cli("sweep", "--epochs", "1", setup=setup)
    one_line_error(process, r"^labelsmooth sweep: error: the lab needs numpy, not installed here; .*"
                            r'pip install "labelsmooth\[lab\]"$')


@pytest.mark.slow
def test_reproduce_help_lists_distillation_and_finds_the_name_after_options():
    listing = labelsmooth_cli("reproduce", "--help")
    assert listing.returncode == 0 and "distillation:" in listing.stdout
    for args in (["reproduce", "--quick", "distillation", "--help"],
                 ["reproduce", "distillation", "--quick", "--help"]):
        process = labelsmooth_cli(*args)
        assert process.returncode == 0 and "--temperatures" in process.stdout, process.stderr


@pytest.mark.parametrize("name, args, line", [
    ("sweep", argparse.Namespace(out="runs/sweep-20250101-120000", out_given=False),
     "Interrupted; finished epochs are saved in runs/sweep-20250101-120000. Run the same command with --out "
     "runs/sweep-20250101-120000 to resume."),
    ("reproduce", argparse.Namespace(out="runs/overfitting"),
     "Interrupted; finished epochs are saved in runs/overfitting. Run the same command to resume."),
    ("calibrate", argparse.Namespace(out="plots"), "Interrupted."),
])
def test_the_interrupted_line_says_how_to_resume(capsys, name, args, line):
    """(The whole path, Ctrl-C to a sweep process and its resume, is in test_lab_sweep.)"""
    assert cli._interrupted(name, args) == 130
    assert capsys.readouterr().err == f"\n{line}\n"
