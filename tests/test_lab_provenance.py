"""lab.provenance: the versions, commit and machine a run records, against torch, platform and git."""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import labelsmooth
from labelsmooth.lab.provenance import cpu_model, git_commit, provenance


def test_provenance_names_the_versions_and_the_machine():
    record = provenance("cpu", wall_seconds=12.345)
    assert record["labelsmooth"] == labelsmooth.__version__ and record["torch"] == torch.__version__
    assert record["python"] == platform.python_version() and record["gpu"] is None
    assert record["wall_seconds"] == 12.3 and record["threads"] == torch.get_num_threads()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", record["date"])
    assert record["cpu"] == cpu_model() and record["cpu"]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_commit_of_a_checkout_and_of_a_plain_folder(tmp_path):
    assert git_commit(tmp_path) is None
    package = Path(labelsmooth.__file__).parent
    done = subprocess.run(["git", "-C", str(package), "rev-parse", "HEAD"], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip("the package is not imported from a git checkout")
    assert git_commit().removesuffix("+dirty") == done.stdout.strip()
