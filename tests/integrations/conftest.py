"""Fixtures of the framework adapters' tests: torch on one thread; running a script of examples/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def single_thread():
    """torch on one thread during the test (CI runs two test processes on two cores), then restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_example(name: str, *args: str, python_code: str | None = None, timeout: float = 600) -> str:
    """Run ``examples/<name>`` in a fresh process on one thread; its stdout, or the test fails.

    ``python_code``, if given, runs instead of the script's path (``sys.argv[1]`` is the path).
    """
    path = str(EXAMPLES / name)
    command = [sys.executable, "-c", python_code, path] if python_code else [sys.executable, path]
    result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, f"{name} exited with {result.returncode}:\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="session")
def example():
    return run_example
