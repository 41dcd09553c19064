"""Tests of ``labelsmooth.ops.utils``: importing the Triton path leaves the environment alone, and
a CPU tensor sent to the kernels without Triton's interpreter gets an error that says how to
switch the interpreter on.

Each case runs in a fresh Python process whose environment has no ``TRITON_INTERPRET`` (this
test session's own environment has it, from conftest.py, on machines without CUDA).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install 'labelsmooth[gpu]')", allow_module_level=True)


def run_without_interpreter(code: str) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_importing_the_kernels_does_not_change_the_environment():
    result = run_without_interpreter("""
        import os
        import labelsmooth.ops.cross_entropy, labelsmooth.ops.linear_cross_entropy
        from labelsmooth.ops.utils import interpreter_active
        print(os.environ.get("TRITON_INTERPRET"), interpreter_active())
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["None", "False"]


@pytest.mark.slow
@pytest.mark.parametrize("entry_point", ["cross_entropy", "fused_cross_entropy_with_grad"])
def test_cpu_tensor_without_interpreter_says_how_to_switch_it_on(entry_point):
    call = {"cross_entropy": "labelsmooth.cross_entropy(logits, target, impl='triton')",
            "fused_cross_entropy_with_grad": "fused_cross_entropy_with_grad(logits, target)"}[entry_point]
    result = run_without_interpreter(f"""
        import torch, labelsmooth
        from labelsmooth.ops.cross_entropy import fused_cross_entropy_with_grad
        logits, target = torch.zeros(2, 3), torch.tensor([0, 1])
        try:
            {call}
        except ValueError as error:
            print(error)
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    message = result.stdout.strip()
    assert "must be a CUDA tensor for the Triton kernels, got a tensor on cpu" in message, message
    assert "set TRITON_INTERPRET=1 in the environment before importing labelsmooth or triton" in message, message
