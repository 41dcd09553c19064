"""Where and with what a lab run's numbers were made: versions, git commit, machine, date, time.

:func:`provenance` returns a plain-JSON dict that a sweep stores in its ``results.json`` and a
report shows at its top, so a number can be traced to the code and the machine that made it:

- ``labelsmooth``, ``torch``, ``python``: versions; ``git``: the commit of the source tree the
  package was imported from (with ``+dirty`` when it has uncommitted changes), or None when it
  is not a git checkout (an installed wheel) or git is missing;
- ``platform``, ``cpu`` (the processor's model name), ``threads`` (torch's CPU threads), ``gpu``
  (the CUDA device's name when the run used one, else None);
- ``date``: when the dict was made (ISO 8601, local time with offset); ``wall_seconds``: the time
  the run spent, when the caller measured it.
"""

from __future__ import annotations

import datetime
import platform
import subprocess
from pathlib import Path

__all__ = ["cpu_model", "git_commit", "provenance"]


def git_commit(folder: Path | None = None) -> str | None:
    """The commit of the git checkout holding ``folder`` (default: this package), ``+dirty`` when
    it has uncommitted changes; None outside a checkout or without git."""
    folder = Path(folder or Path(__file__).resolve().parent)

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                                  timeout=5, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    changes = git("status", "--porcelain", "--untracked-files=no")
    return commit + ("+dirty" if changes else "")


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def provenance(device: str = "cpu", *, wall_seconds: float | None = None) -> dict:
    """Versions, commit, machine and date now, for a run on ``device``; see the module docstring.

    >>> record = provenance()
    >>> sorted(record)[:4], record["gpu"]
    (['cpu', 'date', 'git', 'gpu'], None)
    """
    import torch

    from .. import __version__

    gpu = None
    if str(device).startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(device))
    return {
        "labelsmooth": __version__, "git": git_commit(), "torch": torch.__version__,
        "python": platform.python_version(), "platform": platform.platform(), "cpu": cpu_model(),
        "threads": torch.get_num_threads(), "gpu": gpu,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "wall_seconds": None if wall_seconds is None else round(float(wall_seconds), 1),
    }
