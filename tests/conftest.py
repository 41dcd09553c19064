"""Test configuration: Triton's interpreter on machines without CUDA, and a float64 reference for
smoothed cross-entropy written from the definition.

Without a CUDA device the Triton kernels run only through Triton's interpreter, which Triton
switches on when it is first imported with ``TRITON_INTERPRET=1`` in the environment. pytest loads
this file before it imports any test module or doctest, so the switch is set here (unless the
environment already says otherwise); the library itself never touches the environment.

The reference builds the dense smoothed target ``q' = (1 - eps) onehot(y) + eps u(. | y)`` and
returns ``-sum_c w_c q'_c log p_c`` per row, which is the weight rule
``(1 - eps) w_y (-log p_y) + eps sum_c w_c u(c | y) (-log p_c)`` written as one sum. It shares no
code with ``labelsmooth``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def reference_smoothing_rows(target: torch.Tensor, num_classes: int, distribution) -> torch.Tensor:
    """``u(. | y)`` for each row of ``target`` (M,), shape (M, K), float64."""
    onehot = torch.nn.functional.one_hot(target, num_classes).double()
    if isinstance(distribution, torch.Tensor):
        dist = distribution.double()
        return dist.expand_as(onehot).clone() if dist.dim() == 1 else dist[target]
    if distribution == "uniform":
        return torch.full_like(onehot, 1.0 / num_classes)
    if distribution == "non_target":
        return (1 - onehot) / (num_classes - 1)
    raise AssertionError(distribution)


def reference_cross_entropy(logits, target, *, eps=0.0, distribution="uniform", weight=None,
                            ignore_index=-100, reduction="mean", z_loss=0.0, softcap=None):
    """Dense float64 label-smoothed CE for (N, K) or (N, K, d1, ...) logits and class indices.

    ``eps`` is a float or a tensor with the target's shape.
    """
    num_classes = logits.shape[1]
    x = logits.movedim(1, -1).reshape(-1, num_classes).double()
    y = target.reshape(-1)
    valid = y != ignore_index
    y_safe = torch.where(valid, y, 0)
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    log_p = x.log_softmax(1)
    eps_rows = (eps.reshape(-1).double() if isinstance(eps, torch.Tensor) and eps.dim()
                else torch.as_tensor(eps, dtype=torch.float64).expand(len(y)))
    onehot = torch.nn.functional.one_hot(y_safe, num_classes).double()
    u = reference_smoothing_rows(y_safe, num_classes, distribution)
    q = (1 - eps_rows)[:, None] * onehot + eps_rows[:, None] * u
    w = weight.double() if weight is not None else torch.ones(num_classes, dtype=torch.float64)
    rows = -(w * q * log_p).sum(1) + z_loss * torch.logsumexp(x, 1) ** 2
    rows = torch.where(valid, rows, torch.zeros((), dtype=torch.float64))
    if reduction == "none":
        return rows.reshape(target.shape)
    if reduction == "sum":
        return rows.sum()
    denominator = torch.where(valid, w[y_safe], torch.zeros((), dtype=torch.float64)).sum()
    return rows.sum() / denominator if denominator > 0 else rows.sum() * 0


@pytest.fixture(scope="session")
def reference_ce():
    return reference_cross_entropy


@pytest.fixture(scope="session")
def smoothing_rows():
    return reference_smoothing_rows


def reference_class_collapse(features, labels) -> tuple[float, float]:
    """(NC1, scatter ratio) in float64: tr(S_W S_B^+) / K (Papyan, Han & Donoho 2020, with SciPy's
    pseudo-inverse) and tr(S_W) / tr(S_B), over the classes present in ``labels``."""
    import numpy as np
    import scipy.linalg

    h, y = np.asarray(features, dtype=np.float64), np.asarray(labels)
    classes = np.unique(y)
    means = np.stack([h[y == k].mean(0) for k in classes])
    centred = h - means[np.searchsorted(classes, y)]
    within = centred.T @ centred / len(h)
    spread = means - means.mean(0)
    between = spread.T @ spread / len(classes)
    return (float(np.trace(within @ scipy.linalg.pinvh(between))) / len(classes),
            float(np.trace(within) / np.trace(between)))


@pytest.fixture(scope="session")
def class_collapse_reference():
    return reference_class_collapse


def run_sweep_without_report(config, out: Path) -> Path:
    """A real sweep of ``config`` into ``out`` on one torch thread, without its report (the tests
    that use it build or check the report's sections themselves); returns ``out``."""
    from labelsmooth.lab import sweep

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sweep, "build_report", lambda run_dir: None)
            sweep.run_sweep(config, out, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def sweep_without_report():
    return run_sweep_without_report


# Synthetic lab runs (for the lab report's tests) ----------------------------------------------------


def _synthetic_history(epochs: int, minimum_epoch: int, rise: float, offset: float) -> list[dict]:
    """val_nll falls to 0.5 + offset at ``minimum_epoch`` then rises linearly by ``rise``."""
    rows = []
    for epoch in range(1, epochs + 1):
        if epoch <= minimum_epoch:
            nll = 0.5 + offset + (minimum_epoch - epoch) * 0.1
        else:
            nll = 0.5 + offset + rise * (epoch - minimum_epoch) / (epochs - minimum_epoch)
        rows.append(dict(epoch=epoch, train_loss=1.0 / epoch, val_loss=nll + 0.2, val_nll=nll,
                         val_accuracy=0.8 + offset, val_ece=0.05 + offset))
    return rows


def _synthetic_results(rises: dict[float, list[float]], *, epochs: int = 12, minimum_epoch: int = 4,
                      accuracy: dict[float, list[float]] | None = None, config: dict | None = None) -> dict:
    """results.json with one run per (eps, seed); ``rises[eps][seed]`` sets the val NLL rise (the mean of
    the last 3 of 12 epochs lies ``7/8 rise`` above the minimum at epoch 4). The config says the per-epoch
    metrics are on the validation split unless it says otherwise."""
    runs = []
    for eps, per_seed in rises.items():
        for seed, rise in enumerate(per_seed):
            history = _synthetic_history(epochs, minimum_epoch, rise, offset=0.001 * seed)
            acc = accuracy[eps][seed] if accuracy else history[-1]["val_accuracy"]
            runs.append(dict(label_smoothing=eps, seed=seed, distribution="uniform", model="seed-cnn",
                             cell=f"eps{eps}-seed{seed}", history=history,
                             test=dict(loss=history[-1]["val_loss"], nll=history[-1]["val_nll"],
                                       accuracy=acc, ece=history[-1]["val_ece"])))
    config = {"validation_split": "holdout", **(config or {"dataset": "digits", "model": "seed-cnn"})}
    return {"config": config, "runs": runs, "complete": True}


def _write_run(directory: Path, results: dict) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(results["config"]))
    (directory / "results.json").write_text(json.dumps(results))
    return directory


def _verdicts_of(page: str) -> list[dict]:
    found = re.search(r'<script type="application/json" id="verdicts-data">(.*?)</script>', page, re.S)
    return json.loads(found.group(1))


@pytest.fixture(scope="session")
def lab_runs():
    """Synthetic lab runs: ``history(...)``, ``results(...)`` (a results.json), ``write(dir, results)``
    (a run directory) and ``verdicts_of(page)`` (the verdicts embedded in a report page)."""
    return SimpleNamespace(history=_synthetic_history, results=_synthetic_results, write=_write_run,
                           verdicts_of=_verdicts_of)
