"""lab.merge: ``labelsmooth merge`` on synthetic run directories written here per the lab contract
(order, refusals and their messages, atomic output); and end to end on digits: shards of a real
sweep, merged, equal the unsharded sweep exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from labelsmooth.cli import main
from labelsmooth.lab import merge, sweep
from labelsmooth.lab.config import SweepConfig
from labelsmooth.lab.merge import merge_shards

# Merge on synthetic run directories --------------------------------------------------------------

# The grid of GRID's config in the sweep's order (model, distribution, eps, seed), written out.
GRID = dict(models=("mlp",), label_smoothing=(0.0, 0.1, 0.2), seeds=(0, 1), epochs=2)
GRID_KEYS = ["mlp-uniform-eps0-seed0", "mlp-uniform-eps0-seed1", "mlp-uniform-eps0.1-seed0",
             "mlp-uniform-eps0.1-seed1", "mlp-uniform-eps0.2-seed0", "mlp-uniform-eps0.2-seed1"]


def synthetic_run(key: str, finished: bool = True) -> dict:
    """A run as results.json holds it, with numbers derived from the key (so each is distinct)."""
    model, distribution, eps, seed = key.split("-")
    value = float(eps[3:]) + 0.01 * int(seed[4:])
    history = [{"epoch": e, "train_loss": 1 / e + value, "val_loss": 1.1 / e + value,
                "val_nll": 1 / e + value, "val_accuracy": 0.5 + value, "val_ece": 0.1 + value}
               for e in (1, 2)]
    return {"label_smoothing": float(eps[3:]), "seed": int(seed[4:]), "distribution": distribution,
            "model": model, "cell": key, "history": history if finished else history[:1],
            "test": {"loss": value, "nll": value, "accuracy": 0.5, "ece": 0.1} if finished else None}


def write_shard(directory: Path, keys: list[str], *, shard: str | None = None, unfinished=(),
                **changes) -> Path:
    """A shard's run directory: config.json, results.json and cells/<key>/final.npz."""
    config = SweepConfig(**{**GRID, **changes}, shard=shard).to_dict()
    runs = [synthetic_run(key, key not in unfinished) for key in keys]
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "results.json").write_text(json.dumps(
        {"config": config, "runs": runs, "complete": not unfinished}))
    for key in keys:
        if key not in unfinished:
            (directory / "cells" / key).mkdir(parents=True)
            # the arrays of the run-directory contract, with values that tell the cells apart
            logits = np.arange(12, dtype=np.float32).reshape(4, 3) * len(key)
            target = np.array([0, 1, 2, 0], np.int64)
            np.savez(directory / "cells" / key / "final.npz", test_logits=logits, test_target=target,
                     holdout_logits=logits, holdout_target=target, train_logits=logits,
                     train_target=target)
    return directory


def three_shards(root: Path, changes: dict[int, dict] | None = None) -> list[Path]:
    """Shards 1/3, 2/3, 3/3 of GRID, dealt by hand: positions 0,3 / 1,4 / 2,5; ``changes[i]``
    are write_shard options of shard i."""
    return [write_shard(root / f"shard{i}", [GRID_KEYS[i - 1], GRID_KEYS[i + 2]], shard=f"{i}/3",
                        **(changes or {}).get(i, {})) for i in (1, 2, 3)]


@pytest.fixture
def no_report(monkeypatch):
    """Skip the report (tested on its own) but for the summary.txt the commands print; record
    which run directories asked for it."""
    calls = []

    def build_report(run_dir):
        calls.append(Path(run_dir))
        (Path(run_dir) / "summary.txt").write_text("summary\n")

    monkeypatch.setattr(merge, "build_report", build_report)
    monkeypatch.setattr(sweep, "build_report", build_report)
    return calls


def test_merge_orders_runs_as_the_grid_and_writes_a_run_directory(tmp_path, no_report):
    shards = three_shards(tmp_path)
    out = tmp_path / "merged"
    merged = merge_shards([shards[2], shards[0], shards[1]], out)
    assert [run["cell"] for run in merged["runs"]] == GRID_KEYS
    assert merged["runs"] == [synthetic_run(key) for key in GRID_KEYS]
    assert merged["complete"] is True and no_report == [out]
    unsharded_config = SweepConfig(**GRID).to_dict()
    assert merged["config"] == unsharded_config and unsharded_config["shard"] is None
    assert json.loads((out / "config.json").read_text()) == unsharded_config
    assert json.loads((out / "results.json").read_text()) == merged
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[:2] == ["cell", "model"] and len(rows) == 1 + 2 * len(GRID_KEYS)
    assert [row.split(",")[0] for row in rows[1::2]] == GRID_KEYS
    for index, key in enumerate(GRID_KEYS):
        source = shards[index % 3] / "cells" / key / "final.npz"
        assert (out / "cells" / key / "final.npz").read_bytes() == source.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged", "shard1", "shard2", "shard3"]


@pytest.mark.slow
def test_merge_command_builds_the_report(tmp_path, capsys):
    out = tmp_path / "merged"
    assert main(["merge", *map(str, three_shards(tmp_path)), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "6 cells, complete" in printed and str(out / "report.html") in printed
    assert "6 cells" in (out / "report.html").read_text()


def test_mismatched_configs_are_refused_naming_the_keys_and_run_dirs(tmp_path, capsys):
    shards = three_shards(tmp_path, {2: dict(lr=0.02), 3: dict(epochs=3, lr=0.02)})
    out = tmp_path / "merged"
    assert main(["merge", *map(str, shards), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "configs differ in 'epochs', 'lr'" in error
    assert f"{shards[0]}: 0.01; {shards[1]}: 0.02; {shards[2]}: 0.02" in error
    assert f"{shards[0]}: 2; {shards[1]}: 2; {shards[2]}: 3" in error
    assert not out.exists()


def test_shards_may_differ_in_where_the_data_lives(tmp_path, no_report):
    shards = three_shards(tmp_path, {1: dict(data_dir="/mnt/a"), 2: dict(data_dir="/mnt/b")})
    merged = merge_shards(shards, tmp_path / "merged")
    assert [run["cell"] for run in merged["runs"]] == GRID_KEYS


def test_missing_cells_are_named_unless_partial_is_allowed(tmp_path, no_report):
    shards = three_shards(tmp_path)
    with pytest.raises(ValueError, match=r"do not cover the grid: 2 of 6 cells missing: "
                                         r"mlp-uniform-eps0.1-seed0, mlp-uniform-eps0.2-seed1 "):
        merge_shards(shards[:2], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    merged = merge_shards(shards[:2], tmp_path / "merged", allow_partial=True)
    assert [run["cell"] for run in merged["runs"]] == [GRID_KEYS[i] for i in (0, 1, 3, 4)]
    assert merged["complete"] is False


def test_incomplete_shards_are_refused_unless_partial_is_allowed(tmp_path, no_report):
    shards = three_shards(tmp_path, {2: dict(unfinished=(GRID_KEYS[4],))})
    with pytest.raises(ValueError, match=f"shard\\(s\\) {shards[1]} are not complete"):
        merge_shards(shards, tmp_path / "merged")
    merged = merge_shards(shards, tmp_path / "merged", allow_partial=True)
    assert merged["complete"] is False and merged["runs"][4]["test"] is None
    assert not (tmp_path / "merged" / "cells" / GRID_KEYS[4]).exists()


def test_duplicate_cells_are_refused_even_when_partial(tmp_path):
    shards = three_shards(tmp_path)
    unsharded = write_shard(tmp_path / "whole", GRID_KEYS)
    with pytest.raises(ValueError, match=f"2 cell\\(s\\) held by more than one shard: {GRID_KEYS[0]} "
                                         f"\\(in {shards[0]} and {shards[0]}\\), {GRID_KEYS[3]} "):
        merge_shards([*shards, shards[0]], tmp_path / "merged", allow_partial=True)
    with pytest.raises(ValueError, match=f"{GRID_KEYS[1]} \\(in {shards[1]} and {unsharded}\\), "
                                         f"{GRID_KEYS[4]} "):
        merge_shards([shards[1], unsharded], tmp_path / "merged", allow_partial=True)
    assert not (tmp_path / "merged").exists()


def test_out_must_be_new_or_empty(tmp_path, no_report, capsys):
    shards = three_shards(tmp_path)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert main(["merge", *map(str, shards), "--out", str(tmp_path / "taken")]) == 2
    assert "--out: expected a new or empty directory" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    assert len(merge_shards(shards, tmp_path / "empty")["runs"]) == 6


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "results.json").unlink(), "no results.json in it"),
    (lambda d: (d / "config.json").write_text("{not json"), "expected JSON in"),
    (lambda d: (d / "results.json").write_text('{"runs": 3}'), "a 'runs' list of objects"),
    (lambda d: (d / "results.json").write_text('{"runs": [{"cell": "../../etc"}]}'),
     "plain folder name, got '../../etc'"),
    (lambda d: (d / "results.json").write_text('{"runs": [{"cell": ""}]}'), "folder name, got ''"),
    (lambda d: (d / "config.json").write_text('{"epoch": 2}'), "expected a sweep's config"),
])
def test_broken_run_directories_are_refused_with_the_reason(tmp_path, damage, message):
    shards = three_shards(tmp_path)
    for shard in shards:
        damage(shard)
    with pytest.raises(ValueError, match=message):
        merge_shards(shards, tmp_path / "merged")
    with pytest.raises(ValueError, match="no such directory"):
        merge_shards([tmp_path / "nowhere"], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_cells_outside_the_grid_are_refused(tmp_path):
    shards = three_shards(tmp_path, {1: dict(label_smoothing=(0.0, 0.1))})
    other = write_shard(tmp_path / "other", ["mlp-uniform-eps0.3-seed0"], label_smoothing=(0.0, 0.1, 0.2))
    with pytest.raises(ValueError, match="configs differ in 'label_smoothing'"):
        merge_shards(shards, tmp_path / "merged")
    with pytest.raises(ValueError, match="mlp-uniform-eps0.3-seed0 are not in the grid"):
        merge_shards([*shards[1:], other], tmp_path / "merged", allow_partial=True)


# End to end: shards of a real sweep, merged, equal the unsharded sweep ---------------------------

TINY = ["--dataset", "digits", "--train-fraction", "0.15", "--epochs", "2", "--lr", "0.05",
        "--label-smoothing", "0", "0.1", "--seeds", "0", "1", "--no-progress"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "seed-cnn"])
def test_shards_merged_equal_the_unsharded_sweep(tmp_path, no_report, model):
    tiny = [*TINY, "--model", model]
    assert main(["sweep", *tiny, "--out", str(tmp_path / "whole")]) == 0
    for shard in ("1/2", "2/2"):
        assert main(["sweep", *tiny, "--shard", shard, "--out", str(tmp_path / shard[0])]) == 0
    halves = [json.loads((tmp_path / d / "results.json").read_text()) for d in "12"]
    assert [len(h["runs"]) for h in halves] == [2, 2] and halves[0]["config"]["shard"] == "1/2"
    assert main(["merge", str(tmp_path / "2"), str(tmp_path / "1"), "--out", str(tmp_path / "merged")]) == 0

    whole, merged = tmp_path / "whole", tmp_path / "merged"
    for name in ("config.json", "metrics.csv"):
        assert (merged / name).read_text() == (whole / name).read_text(), name
    merged_results, whole_results = (json.loads((d / "results.json").read_text()) for d in (merged, whole))
    assert merged_results.pop("provenance")["wall_seconds"] > 0
    whole_results.pop("provenance")
    assert merged_results == whole_results
    for run in json.loads((whole / "results.json").read_text())["runs"]:
        expected, found = (np.load(d / "cells" / run["cell"] / "final.npz") for d in (whole, merged))
        assert sorted(found.files) == sorted(expected.files)
        for key in expected.files:
            np.testing.assert_array_equal(found[key], expected[key])


def test_shards_of_an_older_lab_merge_into_an_older_run_and_added_keys_take_their_old_value(tmp_path, no_report):
    """Shards written before the validation split stay so after the merge (the report then says
    their per-epoch metrics came from the test split), and a shard written before remap_labels
    existed counts as remap_labels false."""
    shards = three_shards(tmp_path)
    for shard in shards:
        config = json.loads((shard / "config.json").read_text())
        for key in ("validation_split", "preset", "quick", *(("remap_labels",) if shard.name == "shard2" else ())):
            del config[key]
        (shard / "config.json").write_text(json.dumps(config))
    merged = merge_shards(shards, tmp_path / "merged", report=False)["config"]
    assert "validation_split" not in merged and merged["remap_labels"] is False
    assert "validation_split" not in json.loads((tmp_path / "merged" / "config.json").read_text())
