"""Every Triton kernel specialization the host code launches compiles to sm_90 and sm_80 machine code
with Triton's own compiler and bundled ptxas (no GPU), and none spills registers.

``benchmarks/kernel_resources.py --quick`` runs the real host code on CPU tensors with the launches
intercepted, lets Triton's binder work out each launch's specialization for the target (dtypes,
16-byte alignment of pointers and integers, constexprs, warps) and compiles it. It runs in a fresh
process without ``TRITON_INTERPRET`` (the kernels must be real JIT functions). The full matrix
(every row width, dtype and option; about 500 specializations) is the benchmark's default run.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_launched_specializations_compile_for_sm90_and_sm80_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel_resources.py"), "--quick"], env=env,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    compiled = re.search(r"(\d+) specializations compiled .*, 0 with spills", result.stdout)
    assert compiled and int(compiled.group(1)) >= 40, result.stdout[-3000:]
    for kernel in ("_statistics_kernel", "_gradient_kernel", "_statistics_and_gradient_kernel", "_scale_rows_kernel"):
        for target in ("sm_90", "sm_80"):
            assert re.search(rf"^{kernel}\s+{target}\s", result.stdout, re.M), (kernel, target)
