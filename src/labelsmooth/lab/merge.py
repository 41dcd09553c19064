"""``labelsmooth merge``: combine the run directories of a sharded sweep into one run directory.

Each shard is made by ``labelsmooth sweep ... --shard i/n`` (see :mod:`labelsmooth.lab.shard`).
Merging reads only the shards' ``config.json`` and ``results.json`` (plain JSON) and

- refuses shards whose configs differ in anything but ``shard`` and the keys a sweep may resume
  with (``config.RESUME_IGNORES``: where the data lives, which may differ between machines),
  naming the keys and the run directories (a key added to config.json later, ``config.ADDED_KEYS``,
  counts with its old value where a shard lacks it); two shards holding the same cell; a cell
  that is not in the grid;
- refuses an incomplete shard, or a union that misses cells of the grid (naming them), unless
  ``allow_partial`` (the merged run is then ``"complete": false``, like an unfinished sweep);
- writes a new run directory, never into a non-empty one, atomically (built in a hidden folder
  beside it, then renamed): ``config.json`` (the sweep's config with ``shard`` None; without
  ``validation_split`` when the shards predate the validation split, so the report says so),
  ``results.json`` with the runs in grid order (``config.grid_cells``), ``metrics.csv``, each
  cell's ``cells/<cell key>/`` copied from its shard and, for a grid with label noise, the first
  shard's ``label_noise.npz`` (every shard records the draws of the whole grid); then builds the
  report.

So merging every shard of a finished grid writes the ``results.json`` the unsharded sweep writes:
same runs, same order, same numbers (bit for bit on the CPU where a shard's cells are trained
with the same kernels as in the unsharded sweep; see the tests).

>>> import tempfile, pathlib
>>> from labelsmooth.lab.config import SweepConfig
>>> from labelsmooth.lab.rundir import write_json
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> for shard, eps in (("1/2", 0.0), ("2/2", 0.1)):
...     config = SweepConfig(label_smoothing=(0.0, 0.1), shard=shard).to_dict()
...     cell = f"seed-cnn-uniform-eps{eps:g}-seed0"
...     runs = [{"label_smoothing": eps, "seed": 0, "cell": cell, "history": [], "test": {}}]
...     (root / shard[0]).mkdir()
...     write_json(root / shard[0] / "config.json", config)
...     results = {"config": config, "runs": runs, "complete": True}
...     write_json(root / shard[0] / "results.json", results)
>>> merged = merge_shards([root / "2", root / "1"], root / "all", report=False)
>>> [run["cell"] for run in merged["runs"]], merged["config"]["shard"], merged["complete"]
(['seed-cnn-uniform-eps0-seed0', 'seed-cnn-uniform-eps0.1-seed0'], None, True)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .config import ADDED_KEYS, DERIVED_KEYS, RESUME_IGNORES, SweepConfig, grid_cells
from .report.builder import build_report
from .rundir import LABEL_NOISE_FILE, is_plain_cell_key, write_json, write_metrics_csv

__all__ = ["MergeError", "Shard", "add_arguments", "load_shard", "merge_shards", "run"]

SHARD_KEY = "shard"
MAY_DIFFER = frozenset({SHARD_KEY}) | RESUME_IGNORES  # config keys in which shards may differ
MAX_LISTED = 20  # items named in a message before "... and N more"


class MergeError(ValueError):
    """Shards that cannot be merged; the message says which and why."""


@dataclass(frozen=True)
class Shard:
    """One run directory's JSON: its config.json and results.json."""

    run_dir: Path
    config: dict
    results: dict

    @property
    def complete(self) -> bool:
        return self.results.get("complete") is True


def _read_json(path: Path) -> object:
    if not path.is_file():
        where = "no such directory" if not path.parent.is_dir() else f"no {path.name} in it"
        raise MergeError(f"RUN_DIRS: expected run directories of `labelsmooth sweep`, got "
                         f"{path.parent} ({where})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise MergeError(f"RUN_DIRS: expected JSON in {path}, got a file that is not "
                         f"({error})") from None


def _plain_cell_key(key: object, path: Path) -> str:
    """A cell key names a folder under cells/: one path component, not '.', '..' or hidden."""
    if not is_plain_cell_key(key):
        raise MergeError(f"RUN_DIRS: expected every run in {path} to have a 'cell' key that is a "
                         f"plain folder name, got {key!r}")
    return key


def load_shard(run_dir: str | os.PathLike) -> Shard:
    """Read and shape-check one run directory (config.json object, results.json with runs)."""
    run_dir = Path(run_dir)
    config = _read_json(run_dir / "config.json")
    results = _read_json(run_dir / "results.json")
    if not isinstance(config, dict):
        raise MergeError(f"RUN_DIRS: expected {run_dir / 'config.json'} to hold an object, "
                         f"got {type(config).__name__}")
    if not isinstance(results, dict) or not isinstance(results.get("runs"), list) or not all(
            isinstance(run, dict) for run in results["runs"]):
        raise MergeError(f"RUN_DIRS: expected {run_dir / 'results.json'} to hold an object with "
                         f"a 'runs' list of objects, got {json.dumps(results)[:80]}")
    for run in results["runs"]:
        _plain_cell_key(run.get("cell"), run_dir / "results.json")
    return Shard(run_dir, config, results)


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def common_config(shards: list[Shard]) -> SweepConfig:
    """The shards' sweep, unsharded; MergeError naming every key (but MAY_DIFFER) that differs."""
    absent = object()
    differing = {}
    for key in sorted({key for shard in shards for key in shard.config} - MAY_DIFFER):
        values = [shard.config.get(key, ADDED_KEYS.get(key, absent)) for shard in shards]
        if any(value != values[0] for value in values[1:]):
            differing[key] = "; ".join(
                f"{shard.run_dir}: {'(absent)' if value is absent else json.dumps(value)}"
                for shard, value in zip(shards, values))
    if differing:
        raise MergeError(
            f"RUN_DIRS: the shards' configs differ in {', '.join(map(repr, differing))}; shards of "
            f"one sweep differ only in {SHARD_KEY!r} (run each with the same flags but --shard):\n"
            + "\n".join(f"  {key!r}: {shown}" for key, shown in differing.items()))
    try:
        return SweepConfig.from_dict({**shards[0].config, SHARD_KEY: None})
    except (TypeError, ValueError) as error:
        where = shards[0].run_dir / "config.json"
        raise MergeError(f"RUN_DIRS: expected a sweep's config in {where}, got one that is not "
                         f"({error})") from None


def runs_in_grid_order(shards: list[Shard], grid: list[str], *,
                       allow_partial: bool) -> list[tuple[Shard, dict]]:
    """(shard, run) of every cell the shards hold, in grid order. MergeError for a cell held
    twice or not in the grid, and, unless ``allow_partial``, for an incomplete shard or a cell
    no shard holds."""
    owners: dict[str, tuple[Shard, dict]] = {}
    duplicates = []
    for shard in shards:
        for run in shard.results["runs"]:
            key = run["cell"]
            if key in owners:
                duplicates.append(f"{key} (in {owners[key][0].run_dir} and {shard.run_dir})")
            owners.setdefault(key, (shard, run))
    if duplicates:
        raise MergeError(f"RUN_DIRS: {len(duplicates)} cell(s) held by more than one shard: "
                         f"{_listed(duplicates)}; give each shard once")
    strangers = sorted(set(owners) - set(grid))
    if strangers:
        raise MergeError(f"RUN_DIRS: cell(s) {_listed(strangers)} are not in the grid of the "
                         f"shards' config ({len(grid)} cells)")
    unfinished = [str(shard.run_dir) for shard in shards if not shard.complete]
    if unfinished and not allow_partial:
        raise MergeError(f"RUN_DIRS: shard(s) {', '.join(unfinished)} are not complete (finish "
                         f"them by rerunning their sweep command, or pass --allow-partial)")
    missing = [key for key in grid if key not in owners]
    if missing and not allow_partial:
        raise MergeError(f"RUN_DIRS: the shards do not cover the grid: {len(missing)} of "
                         f"{len(grid)} cells missing: {_listed(missing)} (run the missing shards, "
                         f"or pass --allow-partial)")
    return [owners[key] for key in grid if key in owners]


def refuse_nonempty(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MergeError(f"--out: expected a new or empty directory, got {out}, which "
                         f"{'is not a directory' if not out.is_dir() else 'is not empty'}; a run "
                         f"directory is never overwritten")


def write_run_directory(out: Path, results: dict, owners: list[tuple[Shard, dict]]) -> None:
    """Build the run directory in a hidden folder beside ``out``, then rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.merging-", dir=out.parent))
    try:
        for shard, run in owners:
            cell_dir = shard.run_dir / "cells" / run["cell"]
            if cell_dir.is_dir():
                shutil.copytree(cell_dir, staging / "cells" / run["cell"])
        noise = next((path for shard, _ in owners if (path := shard.run_dir / LABEL_NOISE_FILE).is_file()), None)
        if noise is not None:
            shutil.copyfile(noise, staging / LABEL_NOISE_FILE)
        write_json(staging / "config.json", results["config"])
        write_json(staging / "results.json", results)
        write_metrics_csv(staging / "metrics.csv", results["runs"])
        refuse_nonempty(out)
        if out.is_dir():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def merge_shards(run_dirs: list[str | os.PathLike], out: str | os.PathLike, *,
                 allow_partial: bool = False, report: bool = True) -> dict:
    """Merge the shard run directories ``run_dirs`` into the new run directory ``out``.

    Returns the merged results, as written to ``out/results.json``; builds the report unless
    ``report=False``. A refusal raises :class:`MergeError` (a ValueError) and writes nothing.
    """
    out = Path(out)
    if not run_dirs:
        raise MergeError("RUN_DIRS: expected at least one shard's run directory, got none")
    refuse_nonempty(out)
    shards = [load_shard(run_dir) for run_dir in run_dirs]
    config = common_config(shards)
    grid = [cell.key for cell in grid_cells(config)]
    owners = runs_in_grid_order(shards, grid, allow_partial=allow_partial)
    runs = [run for _, run in owners]
    complete = len(runs) == len(grid) and all(run.get("test") is not None for run in runs)
    derived = {key: shards[0].config[key] for key in sorted(DERIVED_KEYS) if key in shards[0].config}
    merged = {**config.to_dict(), **derived}
    if "validation_split" not in shards[0].config:  # shards of an older lab (per-epoch metrics on test)
        del merged["validation_split"]
    results = {"config": merged, "runs": runs, "complete": complete}
    if "original_labels" in shards[0].results:  # --remap-labels: the same data, so the same mapping
        results["original_labels"] = shards[0].results["original_labels"]
    made = [shard.results["provenance"] for shard in shards if isinstance(shard.results.get("provenance"), dict)]
    if made:  # the first shard's machine and versions; the time all shards spent
        results["provenance"] = {**made[0], "wall_seconds": round(sum(p.get("wall_seconds") or 0 for p in made), 1)}
    write_run_directory(out, results, owners)
    if report:
        build_report(out)
    return results


def add_arguments(parser) -> None:
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="the shards' run directories (from labelsmooth sweep ... --shard I/N)")
    parser.add_argument("--out", type=Path, required=True,
                        help="the merged run directory to create (new or empty)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="merge unfinished shards or an incomplete grid (marked not complete)")


def run(args) -> int:
    """``labelsmooth merge``: merge and print the report's summary; exit 2 when refused."""
    try:
        results = merge_shards(args.run_dirs, args.out, allow_partial=args.allow_partial)
    except ValueError as error:
        print(f"labelsmooth merge: error: {error}", file=sys.stderr)
        return 2
    state = "complete" if results["complete"] else "NOT complete (partial merge)"
    print(f"Merged {len(args.run_dirs)} shard(s) into {args.out}: {len(results['runs'])} cells, "
          f"{state}.")
    print((args.out / "summary.txt").read_text(encoding="utf-8"), end="")
    print(f"Results: {args.out / 'results.json'}\nReport: {args.out / 'report.html'}")
    return 0
