"""The Makefile as ``make`` reads it (``make -n``: commands printed, nothing run): ``TORCH`` holds
pip's arguments for torch, so a multi-word value such as another index reaches pip as separate
arguments, as the README says."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def torch_install_commands(*variables: str) -> list[list[str]]:
    """The pip commands (as argument lists) that ``make .venv/.installed`` would run to install torch."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    printed = subprocess.run(["make", "-n", "-B", ".venv/.installed", *variables], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
    return [shlex.split(line) for line in printed.splitlines() if "pip install" in line and "torch" in line]


@pytest.mark.parametrize("value, arguments", [
    (None, ["torch==2.13.0"]),
    (f"torch==2.13.0 --index-url {CPU_INDEX}", ["torch==2.13.0", "--index-url", CPU_INDEX]),
    ("/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
     ["/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"]),
])
def test_torch_variable_reaches_pip_as_its_arguments(value, arguments):
    commands = torch_install_commands(*([f"TORCH={value}"] if value else []))
    assert commands == [[".venv/bin/pip", "install", "-q", *arguments]]
