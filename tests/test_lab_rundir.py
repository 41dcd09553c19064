"""lab.rundir: the one cell-file lookup and its path check, atomic writes that leave the old file
on failure (and name it), the checks that resume, report complete, or refuse a run directory, and
its lock (two processes: see test_lab_sweep)."""

from __future__ import annotations

import json
import os

import pytest

from labelsmooth.lab.rundir import (
    RunDirectoryError,
    cell_file,
    check_run_directory,
    load_results,
    locked,
    write_atomic,
    write_json,
)


def test_cell_file_finds_only_files_of_plain_cell_keys(tmp_path):
    (tmp_path / "cells" / "mlp-uniform-eps0-seed0").mkdir(parents=True)
    (tmp_path / "cells" / "mlp-uniform-eps0-seed0" / "final.npz").write_bytes(b"x")
    (tmp_path / "cells" / "a" / "b").mkdir(parents=True)
    (tmp_path / "cells" / "a" / "b" / "final.npz").write_bytes(b"x")
    (tmp_path / "final.npz").write_bytes(b"x")
    (tmp_path / "cells" / ".hidden").mkdir()
    (tmp_path / "cells" / ".hidden" / "final.npz").write_bytes(b"x")
    found = cell_file(tmp_path, {"cell": "mlp-uniform-eps0-seed0"}, "final.npz")
    assert found == tmp_path / "cells" / "mlp-uniform-eps0-seed0" / "final.npz"
    for key in ("a/b", "..", "../cells/mlp-uniform-eps0-seed0", ".hidden", "", None, "mlp-uniform-eps0-seed1"):
        assert cell_file(tmp_path, {"cell": key}, "final.npz") is None, key
    assert cell_file(tmp_path, {}, "final.npz") is None
    assert cell_file(tmp_path, {"cell": "mlp-uniform-eps0-seed0"}, "model.pt") is None


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    write_json(path, {"old": True})

    def fail(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(RunDirectoryError, match=r"cannot write \S*results.json: disk full"):
        write_atomic(path, fail)
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_check_run_directory_creates_resumes_completes_or_refuses(tmp_path):
    config = {"epochs": 2, "data_dir": "/data/a"}
    assert check_run_directory(tmp_path / "new", config) is None  # to create
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config))
    assert check_run_directory(run, {**config, "data_dir": "/elsewhere"}) is None  # to resume
    (run / "results.json").write_text(json.dumps({"runs": [], "complete": True}))
    assert check_run_directory(run, config) == {"runs": [], "complete": True}
    with pytest.raises(RunDirectoryError, match="epochs: 2 -> 3"):
        check_run_directory(run, {**config, "epochs": 3})
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("mine")
    with pytest.raises(RunDirectoryError, match="not a sweep's run directory"):
        check_run_directory(tmp_path / "notes", config)


def test_load_results_takes_the_config_from_config_json_and_names_a_missing_file(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"runs": []}))
    (tmp_path / "config.json").write_text(json.dumps({"epochs": 2}))
    assert load_results(tmp_path) == {"runs": [], "config": {"epochs": 2}}
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no results.json in it"):
        load_results(tmp_path / "empty")
    with pytest.raises(ValueError, match="no such directory"):
        load_results(tmp_path / "missing")


def test_the_lock_refuses_a_second_holder_holds_the_pid_and_goes_with_its_holder(tmp_path):
    out = tmp_path / "run"
    with locked(out):  # flock locks belong to an open file, so a second open conflicts in one process too
        assert (out / ".lock").read_text() == str(os.getpid())
        with pytest.raises(RunDirectoryError, match=f"^{out} is being written by process {os.getpid()}; "):
            with locked(out):
                pass
    assert list(out.iterdir()) == []
    with locked(out):  # free again
        pass


def test_a_damaged_json_file_is_named(tmp_path):
    (tmp_path / "config.json").write_text('{"epochs": ')
    with pytest.raises(RunDirectoryError, match=r"cannot read \S*config.json as JSON"):
        check_run_directory(tmp_path, {"epochs": 2})
