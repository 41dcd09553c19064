"""labelsmooth.integrations: importing labelsmooth imports no framework; a missing one says what to install.

Each check runs in a fresh interpreter, so modules imported by other tests do not count. A framework
is made missing by ``sys.modules[name] = None``, which makes ``import name`` raise ImportError.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

FRAMEWORKS = ("transformers", "timm", "lightning", "pytorch_lightning", "torchmetrics", "accelerate")


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_importing_labelsmooth_and_its_adapters_imports_no_framework():
    result = python(
        "import sys, labelsmooth, labelsmooth.integrations, labelsmooth.integrations.transformers, "
        "labelsmooth.integrations.timm\n"
        "labelsmooth.calibration, labelsmooth.linear_cross_entropy\n"
        f"print(sorted(name for name in {FRAMEWORKS!r} if name in sys.modules))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_a_missing_framework_names_the_package_to_install():
    result = python("import sys\nsys.modules['torchmetrics'] = None\nimport labelsmooth.integrations.torchmetrics")
    assert result.returncode != 0
    assert ("ImportError: labelsmooth.integrations.torchmetrics needs torchmetrics, which is not installed: "
            "pip install torchmetrics (or pip install \"labelsmooth[torchmetrics]\")") in result.stderr
    result = python("import sys, torch\nsys.modules['transformers'] = None\n"
                    "from labelsmooth.integrations.transformers import apply_to\napply_to(torch.nn.Linear(2, 2))")
    assert result.returncode != 0
    assert "needs transformers, which is not installed: pip install transformers" in result.stderr
