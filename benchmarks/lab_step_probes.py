"""Probes behind "why 3 cells stay below 4x": pieces of the 3-cell seed-cnn training step, on the CPU.

Three measurements, each provider's ``--calls`` calls made in five blocks that take turns with the
other providers' (median kept), every call after an 8 MB copy unless said otherwise, because inside an epoch every step
finds the caches as the previous step's convolutions left them:

(a) ``conv2``: seed-cnn's second layer for 3 cells (48 channels in 3 groups of 16, 14x14 -> 7x7,
    stride 2) on 32 images, forward (with its ReLU) and backward (input, weight and bias
    gradients): oneDNN channels-last (what the lab runs), oneDNN channels-first, torch's own
    convolution without oneDNN, and oneDNN's convolution with the ReLU fused in (forward only).
(b) ``loss``: ``cross_entropy_with_grad`` on the step's 96 x 10 logits with one eps per row, alone
    (the same call repeated: caches warm) and after the 8 MB copy.
(c) ``--compile``: the whole step (``seed_cnn_forward``, the loss, ``seed_cnn_backward``) eager
    and under ``torch.compile`` (needs a C++ compiler), both alone; the compile time is recorded.

    .venv/bin/python benchmarks/lab_step_probes.py [--compile] [--threads N]

Rows go to ``benchmarks/results/lab_step_probes.csv`` (see ``_record.py``); a table is printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from labelsmooth import cross_entropy_with_grad
from labelsmooth.lab.models import seed_cnn_backward, seed_cnn_forward

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import Recorder  # noqa: E402

CELLS, IMAGES, CHANNELS, CLASSES = 3, 32, 16, 10


def alternated_medians(providers: dict[str, Callable[[], object]], calls: int, evict: bool,
                       rounds: int = 5) -> dict[str, float]:
    """Microseconds per call, the median of ``calls`` calls per provider, made in ``rounds`` blocks
    that take turns (a block of one provider's calls does not disturb another's, a slow hour
    slows every provider alike)."""
    source = torch.randn(2 << 20)  # 8 MB
    target = torch.empty_like(source)
    times: dict[str, list[float]] = {name: [] for name in providers}
    for _ in range(rounds):
        for name, fn in providers.items():
            for _ in range(3):  # warm-up of this block
                fn()
            for _ in range(max(1, calls // rounds)):
                if evict:
                    target.copy_(source)
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e6 for name, values in times.items()}


def conv2_providers() -> dict[str, Callable[[], object]]:
    groups, width = CELLS, CELLS * CHANNELS
    weights = 0.1 * torch.randn(width, CHANNELS, 3, 3)
    bias = torch.randn(width)
    inputs = torch.randn(IMAGES, width, 14, 14).relu_()
    grads = torch.randn(IMAGES, width, 7, 7)
    providers = {}
    forms = (("onednn channels-last", torch.channels_last, True),
             ("onednn channels-first", torch.contiguous_format, True),
             ("without onednn channels-last", torch.channels_last, False))
    for name, fmt, onednn in forms:
        x, w, g = (t.contiguous(memory_format=fmt) for t in (inputs, weights, grads))

        def forward(x=x, w=w):
            return F.conv2d(x, w, bias, 2, 1, 1, groups).relu_()

        def backward(x=x, w=w, g=g):
            return torch.ops.aten.convolution_backward(g, x, w, [width], [2, 2], [1, 1], [1, 1], False,
                                                       [0, 0], groups, [True, True, True])

        if not onednn:
            forward, backward = without_onednn(forward), without_onednn(backward)

        providers[f"{name}, forward"] = forward
        providers[f"{name}, backward"] = backward
    x, w = inputs.contiguous(memory_format=torch.channels_last), weights.contiguous(memory_format=torch.channels_last)
    providers["onednn fused relu channels-last, forward"] = lambda: torch.ops.mkldnn._convolution_pointwise(
        x, w, bias, [1, 1], [2, 2], [1, 1], groups, "relu", [], "")
    return providers


def without_onednn(fn: Callable[[], object]) -> Callable[[], object]:
    def call() -> object:
        with torch.backends.mkldnn.flags(enabled=False):
            return fn()
    return call


def step_inputs() -> tuple:
    x = torch.rand(1, IMAGES, 1, 28, 28)
    weights = (0.3 * torch.randn(CELLS, CHANNELS, 1, 3, 3), 0.1 * torch.randn(CELLS, CHANNELS),
               0.1 * torch.randn(CELLS, CHANNELS, CHANNELS, 3, 3), 0.1 * torch.randn(CELLS, CHANNELS),
               0.1 * torch.randn(CELLS, CLASSES, CHANNELS * 9), 0.1 * torch.randn(CELLS, CLASSES))
    target = torch.randint(0, CLASSES, (CELLS * IMAGES,))
    eps = torch.tensor([0.0, 0.05, 0.1]).repeat_interleave(IMAGES)
    return x, weights, target, eps


def training_step(x, w1, b1, w2, b2, w3, b3, target, eps):
    """The lab's step for one input batch read by every cell, without the optimizer."""
    logits, saved = seed_cnn_forward(x, w1, b1, w2, b2, w3, b3, (CELLS,))
    loss, grad = cross_entropy_with_grad(logits.reshape(-1, CLASSES), target, reduction="none",
                                         label_smoothing=eps, validate_args=False)
    return loss, seed_cnn_backward(saved, grad.view(CELLS, IMAGES, CLASSES).div_(IMAGES), [False] + [True] * 6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per provider, median kept (default 200)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="also time the step under torch.compile")
    args = parser.parse_args()
    if args.calls < 1:
        parser.error(f"--calls must be >= 1, got {args.calls}")
    if args.threads:
        torch.set_num_threads(args.threads)
    recorder = Recorder("lab_step_probes")
    results: list[tuple[str, str, str, float]] = []  # (name, provider, metric, value)

    for provider, us in alternated_medians(conv2_providers(), args.calls, evict=True).items():
        results.append(("conv2", provider, "us_per_call", us))

    x, weights, target, eps = step_inputs()
    logits = seed_cnn_forward(x, *weights, (CELLS,))[0].reshape(-1, CLASSES)

    def loss() -> object:
        return cross_entropy_with_grad(logits, target, reduction="none", label_smoothing=eps, validate_args=False)

    warm = alternated_medians({"alone": loss}, args.calls, evict=False)["alone"]
    cold = alternated_medians({"after an 8 MB copy": loss}, args.calls, evict=True)["after an 8 MB copy"]
    results += [("loss", "alone", "us_per_call", warm), ("loss", "after an 8 MB copy", "us_per_call", cold)]

    if args.compile:
        start = time.perf_counter()
        compiled = torch.compile(training_step, dynamic=False)
        compiled(x, *weights, target, eps)
        results.append(("step", "torch.compile", "compile_seconds", time.perf_counter() - start))
        providers = {"eager": lambda: training_step(x, *weights, target, eps),
                     "torch.compile": lambda: compiled(x, *weights, target, eps)}
        times = alternated_medians(providers, args.calls, evict=False)
        results += [("step", provider, "us_per_call", us) for provider, us in times.items()]

    size = f"seed-cnn, {CELLS} cells, {IMAGES} images"
    lines = [f"Threads {torch.get_num_threads()}, {recorder.hardware}\n", "| probe | provider | metric | value |",
             "|---|---|---|---:|"]
    for name, provider, metric, value in results:
        recorder.add(name, provider, size, "fp32", metric, value)
        lines.append(f"| {name} | {provider} | {metric} | {value:.1f} |" if metric == "us_per_call"
                     else f"| {name} | {provider} | {metric} | {value:.2f} |")
    path = recorder.save()
    print("\n".join(lines))
    print(json.dumps({"rows": len(recorder.rows), "csv": str(path)}))


if __name__ == "__main__":
    main()
