"""lab.ranks (with lab.sweep) under torch.distributed: a 2-process data-parallel sweep (gloo, CPU)
equals the single-process sweep, only rank 0 touches the run directory, and rank 0's decisions
(refuse, complete) end every rank alike.

The ranks are launched as ``torchrun`` would launch them (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT in the environment, ``python -m labelsmooth sweep``), but each in its own
working directory with a relative ``--out``: anything rank 1 wrote would appear under its own
folder, which must stay empty.

Tolerance: the data-parallel gradient is the same sum as the single-process one in another order
(each rank sums its rows, then gloo adds the two sums), and the evaluation logits come from other
chunkings of the same matmuls, so float32 results differ by rounding alone: a few ulp per step,
grown over 2 epochs of SGD. Measured: metrics within 5e-7, logits within 3e-6 (magnitudes up to
~10). A wrong gradient scale (the mean of each rank's rows, or DDP's average left unscaled) moves
them by 1e-3 or more.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from labelsmooth.lab.config import SweepConfig
from labelsmooth.lab.data import load_dataset
from labelsmooth.lab.ranks import Ranks
from labelsmooth.lab.sweep import run_sweep

ARGS = ["--dataset", "digits", "--train-fraction", "0.3", "--epochs", "2", "--batch-size", "31",
        "--lr", "0.05", "--model", "mlp", "seed-cnn", "--mlp-widths", "32", "--label-smoothing", "0", "0.1",
        "--seeds", "0", "1", "--distribution", "uniform", "non_target", "--threads", "1", "--no-progress"]
CONFIG = SweepConfig(dataset="digits", train_fraction=0.3, epochs=2, batch_size=31, lr=0.05,
                     models=("mlp", "seed-cnn"), model_options={"mlp": {"widths": [32]}},
                     label_smoothing=(0.0, 0.1), seeds=(0, 1), distributions=("uniform", "non_target"))
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(folders: list[Path], args: list[str]) -> list[subprocess.CompletedProcess]:
    """``python -m labelsmooth sweep ARGS`` as ranks 0..N-1 of one gloo group, rank r in folders[r]."""
    port = free_port()
    processes = []
    for rank, folder in enumerate(folders):
        folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(len(folders)),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        processes.append(subprocess.Popen([sys.executable, "-m", "labelsmooth", "sweep", *args], cwd=folder,
                                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in processes:
        out, err = p.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


def assert_close_numbers(single, parallel, where=""):
    """Same structure and non-float values; floats within TOLERANCE."""
    if isinstance(single, dict):
        assert single.keys() == parallel.keys(), where
        for key in single:
            assert_close_numbers(single[key], parallel[key], f"{where}.{key}")
    elif isinstance(single, list):
        assert len(single) == len(parallel), where
        for i, (a, b) in enumerate(zip(single, parallel)):
            assert_close_numbers(a, b, f"{where}[{i}]")
    elif isinstance(single, float):
        np.testing.assert_allclose(parallel, single, **TOLERANCE, err_msg=where)
    else:
        assert single == parallel, where


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.slow
def test_two_process_sweep_equals_single_process(tmp_path, one_thread):
    single = run_sweep(CONFIG, tmp_path / "single", progress=False)
    ranks = [tmp_path / "rank0", tmp_path / "rank1"]
    done = launch(ranks, [*ARGS, "--out", "runs/ddp"])
    assert [p.returncode for p in done] == [0, 0], [p.stderr for p in done]
    assert files(ranks[1]) == [], "rank 1 wrote into its working directory"
    out = ranks[0] / "runs" / "ddp"
    assert "Results:" in done[0].stdout and "Results:" not in done[1].stdout

    parallel = json.loads((out / "results.json").read_text())
    stored = json.loads((out / "config.json").read_text())
    assert parallel["complete"] and {k: v for k, v in stored.items() if k != "split_sizes"} == CONFIG.to_dict()
    assert single.pop("provenance")["threads"] >= 1 and parallel.pop("provenance")["wall_seconds"] > 0
    assert_close_numbers(single, parallel)
    assert files(out) == files(tmp_path / "single")
    assert not (out / "checkpoint.pt").exists() and (out / "report.html").is_file()
    for run in single["runs"]:
        cell = Path("cells") / run["cell"]
        with np.load(tmp_path / "single" / cell / "final.npz") as a, np.load(out / cell / "final.npz") as b:
            assert a.files == b.files
            for name in a.files:
                assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape
                np.testing.assert_allclose(b[name], a[name], **TOLERANCE, err_msg=f"{cell} {name}")
        a, b = (torch.load(d / cell / "model.pt", weights_only=True) for d in (tmp_path / "single", out))
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(b[name], a[name], **TOLERANCE)

    # rank 0 decides for every rank: a finished sweep is complete, another config is refused
    again = launch(ranks, [*ARGS, "--out", "runs/ddp"])
    assert [p.returncode for p in again] == [0, 0] and "already complete" in again[0].stdout
    other_lr = [*ARGS, "--out", "runs/ddp"]
    other_lr[other_lr.index("--lr") + 1] = "0.1"
    other = launch(ranks, other_lr)
    assert [p.returncode for p in other] == [2, 2]
    assert all("holds a different sweep" in p.stderr and "lr: 0.05 -> 0.1" in p.stderr for p in other)
    assert files(ranks[1]) == []


def test_every_batch_needs_a_row_per_process():
    dataset = load_dataset("digits", train_fraction=0.3)
    assert len(dataset.x_train) % 31 == 28
    Ranks(0, 28).check_splits(CONFIG, dataset)
    with pytest.raises(ValueError, match=r"batch_size must .*\(29 processes\), got 31.*has 28"):
        Ranks(0, 29).check_splits(CONFIG, dataset)
