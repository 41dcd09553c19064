"""The run directory of a lab run: atomic writes, checkpoints, cell files, and the checks that
decide whether a directory is created, resumed, reported complete or refused.

A sweep writes ``config.json`` (its :class:`~labelsmooth.lab.config.SweepConfig` and the split
sizes), after every epoch ``results.json``, ``metrics.csv`` and ``checkpoint.pt`` (weights,
optimizer state, histories; removed when the sweep finishes), and per finished cell
``cells/<key>/final.npz`` (test, validation (``holdout_*``) and training logits and targets, and
``early_test_logits`` / ``early_holdout_logits`` of the weights of the epoch with the lowest
validation NLL) and ``cells/<key>/model.pt`` (the final weights). Every file is
written through a temporary file and renamed into place, so a killed process leaves the old
file or the new one, never a mix; a directory holding another run is never overwritten.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .cells import HISTORY_COLUMNS, CellGroup
from .config import RESUME_IGNORES, Cell, SweepConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "Progress",
    "RunDirectoryError",
    "cell_file",
    "check_run_directory",
    "config_differences",
    "is_plain_cell_key",
    "load_checkpoint",
    "load_results",
    "open_run_directory",
    "save_checkpoint",
    "write_atomic",
    "write_bytes",
    "write_cell_files",
    "write_json",
    "write_metrics_csv",
]

CHECKPOINT_FORMAT = 2


class RunDirectoryError(ValueError):
    """The run directory holds something else (another run, or files that are not a run)."""


# 1. Atomic writes ---------------------------------------------------------------------------------


def write_atomic(path: Path, write: Callable[[io.BufferedWriter], None], *, durable: bool = True) -> None:
    """Write through a temporary file in the same folder, then ``os.replace`` it into place.

    A killed process leaves the old file or the new one, never a mix. ``durable`` also flushes
    the data to disk before the rename (so a power cut cannot leave an empty file); the
    per-epoch ``results.json`` and ``metrics.csv`` skip it (~10 ms each), since the checkpoint
    rebuilds them.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """:func:`write_atomic` of ``data``."""
    write_atomic(path, lambda f: f.write(data), durable=durable)


def write_json(path: Path, value, *, durable: bool = True) -> None:
    write_atomic(path, lambda f: f.write((json.dumps(value, indent=1) + "\n").encode()), durable=durable)


def write_metrics_csv(path: Path, runs: list[dict]) -> None:
    text = io.StringIO()
    columns = ["cell", "model", "distribution", "label_smoothing", "seed", *HISTORY_COLUMNS]
    writer = csv.DictWriter(text, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for run in runs:
        for row in run["history"]:
            writer.writerow({**run, **row})
    write_bytes(path, text.getvalue().encode(), durable=False)


# 2. What a run records ------------------------------------------------------------------------------


@dataclass
class Progress:
    """What the run directory records, by cell key: per-epoch histories, final test metrics, and
    the early-stopped model's (``{"epoch", "validation_nll", "test"}``); and the seconds spent
    training so far (over every resume)."""

    histories: dict[str, list[dict]] = field(default_factory=dict)
    tests: dict[str, dict] = field(default_factory=dict)
    early_stopped: dict[str, dict] = field(default_factory=dict)
    wall_seconds: float = 0.0

    def results(self, config: dict, cells: list[Cell]) -> dict:
        """results.json's object; ``config`` is what config.json stores."""
        runs = [{**c.describe(), "history": self.histories.get(c.key, []), "test": self.tests.get(c.key),
                 "early_stopped": self.early_stopped.get(c.key)} for c in cells]
        return {"config": config, "runs": runs, "complete": all(c.key in self.tests for c in cells)}


def load_results(run_dir: str | os.PathLike) -> dict:
    """``results.json`` of a run directory (its ``config`` taken from ``config.json`` if absent)."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not path.is_file():
        raise ValueError(f"run_dir: expected a run directory containing results.json, got {run_dir} "
                         f"({'no such directory' if not run_dir.is_dir() else 'no results.json in it'})")
    with open(path, encoding="utf-8") as f:
        results = json.load(f)
    if not isinstance(results, dict) or not isinstance(results.get("runs"), list):
        raise ValueError(f"run_dir: expected {path} to hold an object with a 'runs' list, "
                         f"got {type(results).__name__}")
    if "config" not in results and (run_dir / "config.json").is_file():
        with open(run_dir / "config.json", encoding="utf-8") as f:
            results["config"] = json.load(f)
    return results


# 3. Create, resume, or refuse -------------------------------------------------------------------------


def config_differences(stored: dict, config: dict) -> list[str]:
    """Keys (not in RESUME_IGNORES) whose values differ, as ``key: stored -> new`` lines.

    >>> config_differences({"epochs": 2, "data_dir": "a"}, {"epochs": 3, "data_dir": "b"})
    ['epochs: 2 -> 3']
    """
    return [f"{key}: {json.dumps(stored.get(key))} -> {json.dumps(config.get(key))}"
            for key in sorted((set(stored) | set(config)) - RESUME_IGNORES)
            if stored.get(key) != config.get(key)]


def check_run_directory(out: Path, config: dict) -> dict | None:
    """Check ``out`` against ``config`` (the form its config.json stores) without writing: the
    finished results, or None for a directory to create or a run to resume.

    Raises :class:`RunDirectoryError` for a directory holding a different run, or non-empty
    and holding no run at all.
    """
    config_path = out / "config.json"
    if config_path.is_file():
        stored = json.loads(config_path.read_text(encoding="utf-8"))
        if "validation_split" in config and "validation_split" not in stored:
            raise RunDirectoryError(
                f"{out} holds a run of an older version of the lab (its per-epoch metrics came from "
                f"the test split); refusing to overwrite or resume it. 'labelsmooth report {out}' "
                f"rebuilds its report; choose another --out to run the sweep again.")
        differences = config_differences(stored, config)
        if differences:
            raise RunDirectoryError(
                f"{out} holds a different sweep; refusing to overwrite it. Differences "
                f"(stored -> requested):\n  " + "\n  ".join(differences)
                + "\nChoose another --out, or rerun with the stored settings to resume it.")
        results_path = out / "results.json"
        if results_path.is_file():
            results = json.loads(results_path.read_text(encoding="utf-8"))
            if results.get("complete"):
                return results
        return None
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunDirectoryError(f"{out} exists and is not a sweep's run directory (no config.json); "
                                f"refusing to write into it. Choose another --out.")
    return None


def open_run_directory(out: Path, config: dict) -> dict | None:
    """:func:`check_run_directory`, then create the directory and its config.json when new."""
    finished = check_run_directory(out, config)
    if finished is None and not (out / "config.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", config)
    return finished


# 4. Checkpoints ------------------------------------------------------------------------------------


def save_checkpoint(path: Path, config: SweepConfig, progress: Progress, group: CellGroup | None) -> None:
    """The sweep's progress and, mid-model, the training group's state (weights, optimizer)."""
    state = {"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "histories": progress.histories,
             "tests": progress.tests, "early_stopped": progress.early_stopped,
             "wall_seconds": progress.wall_seconds, "group": group.state_dict() if group else None,
             "group_model": group.cells[0].model if group else None}
    write_atomic(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict | None:
    """What :func:`save_checkpoint` wrote (``weights_only``), or None when there is no checkpoint.

    A checkpoint of an older format (written before the lab kept a validation split) raises
    :class:`RunDirectoryError`: its run cannot be resumed with the same meaning.
    """
    if not path.is_file():
        return None
    state = torch.load(path, weights_only=True, map_location="cpu")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise RunDirectoryError(f"{path} was written by an older version of the lab (checkpoint format "
                                f"{state.get('format')}, expected {CHECKPOINT_FORMAT}); its run cannot be "
                                f"resumed. Choose another --out to start it again.")
    return state


# 5. Cell files -------------------------------------------------------------------------------------


def write_cell_files(out: Path, cell: Cell, index: int, group: CellGroup, arrays: dict[str, np.ndarray]) -> None:
    """``cells/<key>/final.npz`` (the cell's ``arrays``) and ``model.pt`` (its final weights).

    Called on every rank (the logits were gathered on all of them); rank 0 writes.
    """
    if not group.ranks.writes:
        return
    folder = out / "cells" / cell.key
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "final.npz", lambda f: np.savez(f, **arrays))
    weights = {k: v.detach().cpu().clone() for k, v in group.stacked.cell(index).state_dict().items()}
    write_atomic(folder / "model.pt", lambda f: torch.save(weights, f))


def is_plain_cell_key(key: object) -> bool:
    """Whether ``key`` can name a folder under ``cells/``: one path component, not '.', '..' or hidden.

    >>> [is_plain_cell_key(k) for k in ("mlp-uniform-eps0-seed0", "../x", "a/b", ".", "", None)]
    [True, False, False, False, False, False]
    """
    return (isinstance(key, str) and bool(key) and key == Path(key).name and not key.startswith(".")
            and "\\" not in key)


def cell_file(run_dir: Path, run: dict, name: str) -> Path | None:
    """``run_dir/cells/<cell>/<name>`` if the run's cell key is a plain folder name and the file exists."""
    key = run.get("cell")
    path = Path(run_dir) / "cells" / str(key) / name
    return path if is_plain_cell_key(key) and path.is_file() else None
