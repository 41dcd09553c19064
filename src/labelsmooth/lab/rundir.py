"""The run directory of a lab run: atomic writes, checkpoints, cell files, and the checks that
decide whether a directory is created, resumed, reported complete or refused.

A sweep writes ``config.json`` (its :class:`~labelsmooth.lab.config.SweepConfig` and the split
sizes), after every epoch ``results.json``, ``metrics.csv`` and ``checkpoint.pt`` (weights,
optimizer state, histories; removed when the sweep finishes), and per finished cell
``cells/<key>/final.npz`` (test, validation (``holdout_*``) and training logits and targets, and
``early_test_logits`` / ``early_holdout_logits`` of the weights of the epoch with the lowest
validation NLL) and ``cells/<key>/model.pt`` (the final weights); a sweep with label noise also
``label_noise.npz`` (:func:`record_label_noise`: which training labels were flipped). Every file is
written through a temporary file and renamed into place, so a killed process leaves the old
file or the new one, never a mix; a directory holding another run is never overwritten.

One process writes a run directory at a time: :func:`locked` holds an exclusive ``flock`` on its
``.lock`` file (holding the writer's pid) and refuses a second writer, naming that pid. The
kernel drops the lock when its process dies, so a killed writer never blocks the next one, which
removes the temporary files the killed writer left.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .cells import HISTORY_COLUMNS, CellGroup
from .config import ADDED_KEYS, RESUME_IGNORES, Cell, SweepConfig

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
    "locked",
    "open_run_directory",
    "read_json",
    "record_label_noise",
    "save_checkpoint",
    "write_atomic",
    "write_bytes",
    "write_cell_files",
    "write_json",
    "write_metrics_csv",
]

CHECKPOINT_FORMAT = 2
TEMPORARY_SUFFIX = ".tmp"  # of write_atomic's temporary files, named .<file>.<pid>.tmp
LOCK_FILE = ".lock"
LABEL_NOISE_FILE = "label_noise.npz"  # the flipped training labels of a sweep with label noise


class RunDirectoryError(ValueError):
    """The run directory holds something else (another run, or files that are not a run), another
    process is writing it, or a file of it cannot be read or written."""


# 1. Atomic writes ---------------------------------------------------------------------------------


def write_atomic(path: Path, write: Callable[[io.BufferedWriter], None], *, durable: bool = True) -> None:
    """Write through a temporary file in the same folder, then ``os.replace`` it into place.

    A killed process leaves the old file or the new one, never a mix. ``durable`` also flushes
    the data to disk before the rename (so a power cut cannot leave an empty file); the
    per-epoch ``results.json`` and ``metrics.csv`` skip it (~10 ms each), since the checkpoint
    rebuilds them.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}{TEMPORARY_SUFFIX}")
    try:
        with open(temporary, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):  # a full disk, a read-only file system: name the file
            raise RunDirectoryError(f"cannot write {path}: {error.strerror or error}") from error
        raise


def write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """:func:`write_atomic` of ``data``."""
    write_atomic(path, lambda f: f.write(data), durable=durable)


def write_json(path: Path, value, *, durable: bool = True) -> None:
    write_atomic(path, lambda f: f.write((json.dumps(value, indent=1) + "\n").encode()), durable=durable)


def write_metrics_csv(path: Path, runs: list[dict]) -> None:
    text = io.StringIO()
    columns = ["cell", "model", "distribution", "label_smoothing", "label_noise", "seed", *HISTORY_COLUMNS]
    writer = csv.DictWriter(text, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for run in runs:
        for row in run["history"]:
            writer.writerow({**run, **row})
    write_bytes(path, text.getvalue().encode(), durable=False)


# 2. What a run records ------------------------------------------------------------------------------


@dataclass
class Progress:
    """What the run directory records, by cell key: per-epoch histories, final test metrics, the
    early-stopped model's (``{"epoch", "validation_nll", "test"}``), and the cells that diverged
    (``{"epoch": e, "reason": ...}``; their training stopped, a run with any is not complete); and
    the seconds spent training so far (over every resume)."""

    histories: dict[str, list[dict]] = field(default_factory=dict)
    tests: dict[str, dict] = field(default_factory=dict)
    early_stopped: dict[str, dict] = field(default_factory=dict)
    diverged: dict[str, dict] = field(default_factory=dict)
    wall_seconds: float = 0.0

    def results(self, config: dict, cells: list[Cell]) -> dict:
        """results.json's object; ``config`` is what config.json stores."""
        runs = [{**c.describe(), "history": self.histories.get(c.key, []), "test": self.tests.get(c.key),
                 "early_stopped": self.early_stopped.get(c.key),
                 **({"diverged": self.diverged[c.key]} if c.key in self.diverged else {})} for c in cells]
        return {"config": config, "runs": runs, "complete": all(c.key in self.tests for c in cells)}


def load_results(run_dir: str | os.PathLike) -> dict:
    """``results.json`` of a run directory (its ``config`` taken from ``config.json`` if absent)."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not path.is_file():
        raise ValueError(f"run_dir: expected a run directory containing results.json, got {run_dir} "
                         f"({'no such directory' if not run_dir.is_dir() else 'no results.json in it'})")
    results = read_json(path)
    if not isinstance(results, dict) or not isinstance(results.get("runs"), list):
        raise ValueError(f"run_dir: expected {path} to hold an object with a 'runs' list, "
                         f"got {type(results).__name__}")
    if "config" not in results and (run_dir / "config.json").is_file():
        results["config"] = read_json(run_dir / "config.json")
    return results


def read_json(path: Path):
    """The JSON value in ``path``; :class:`RunDirectoryError` naming the file when it is not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:
        raise RunDirectoryError(f"cannot read {path} as JSON ({error}); the file is damaged: restore it "
                                f"or choose another run directory") from None


# 3. Create, resume, or refuse -------------------------------------------------------------------------


def config_differences(stored: dict, config: dict) -> list[str]:
    """Keys (not in RESUME_IGNORES) whose values differ, as ``key: stored -> new`` lines; a key
    of ADDED_KEYS that is absent (from an older run directory) has its old value.

    >>> config_differences({"epochs": 2, "data_dir": "a"}, {"epochs": 3, "data_dir": "b", "remap_labels": False})
    ['epochs: 2 -> 3']
    """
    stored, config = {**ADDED_KEYS, **stored}, {**ADDED_KEYS, **config}
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
        stored = read_json(config_path)
        if "validation_split" in config and "validation_split" not in stored:
            raise RunDirectoryError(
                f"{out} holds a run of an older version of the lab (its per-epoch metrics came from "
                f"the test split); refusing to overwrite or resume it. 'labelsmooth report {out}' "
                f"rebuilds its report; choose another --out to run the sweep again.")
        differences = config_differences(stored, config)
        if differences:
            raise RunDirectoryError(
                f"{out} holds a different sweep; refusing to overwrite it. Differences "
                f"(stored -> requested): {'; '.join(differences)}. Choose another --out, or rerun "
                f"with the stored settings to resume it.")
        results_path = out / "results.json"
        if results_path.is_file():
            results = read_json(results_path)
            if isinstance(results, dict) and results.get("complete"):
                return results
        return None
    if out.exists() and (not out.is_dir() or any(p.name != LOCK_FILE for p in out.iterdir())):
        raise RunDirectoryError(f"{out} exists and is not a sweep's run directory (no config.json); "
                                f"refusing to write into it. Choose another --out.")
    return None


def _holder(lock_path: Path) -> str:
    try:
        return f"process {int(lock_path.read_text(encoding='ascii'))}"
    except (OSError, ValueError):  # just created, not yet written
        return "another process"


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on run directory ``out`` (created if missing) for the block.

    :class:`RunDirectoryError` naming the holder's pid when another process holds it. Once the
    lock is held, no other writer is alive, so temporary files under ``out`` (left by a killed
    writer) are removed. The lock file is removed on release.
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirectoryError(f"cannot create the run directory {out}: {error.strerror or error}") from error
    lock_path = out / LOCK_FILE
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise RunDirectoryError(f"{out} is being written by {_holder(lock_path)}; wait for it to finish, "
                                    f"or choose another --out") from None
        try:  # the file may have been removed by the holder we waited behind; lock the current one
            if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode("ascii"))
        for temporary in out.rglob(f".*{TEMPORARY_SUFFIX}"):
            temporary.unlink(missing_ok=True)
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        os.close(fd)


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
             "tests": progress.tests, "early_stopped": progress.early_stopped, "diverged": progress.diverged,
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


def record_label_noise(out: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write :data:`LABEL_NOISE_FILE` (:func:`labelsmooth.lab.noise.draw_arrays`) into run directory
    ``out``; one already there (a resumed run) must hold the same arrays, else RunDirectoryError."""
    path = out / LABEL_NOISE_FILE
    if path.is_file():
        with np.load(path, allow_pickle=False) as stored:
            same = set(stored.files) == set(arrays) and all(np.array_equal(stored[k], v) for k, v in arrays.items())
        if not same:
            raise RunDirectoryError(f"{path} records other flipped training labels than this sweep draws (were "
                                    f"the data files changed?); refusing to resume. Choose another --out.")
        return
    write_atomic(path, lambda f: np.savez(f, **arrays))


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
