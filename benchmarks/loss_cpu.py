"""Forward+backward time and peak memory of label-smoothed cross-entropy on CPU, side by side.

Providers (all with label_smoothing=0.1, reduction="mean", fp32 logits):

- ``torch``: ``F.cross_entropy(..., label_smoothing=0.1)``, eager;
- ``torch_compiled``: the same under ``torch.compile`` (inductor);
- ``labelsmooth``: ``labelsmooth.cross_entropy`` eager (``impl="torch"``, the reference path);
- ``labelsmooth_compiled``: ``torch.compile(fullgraph=True)`` of it with ``validate_args=False``;
- ``labelsmooth_inplace``: eager with ``inplace_backward=True`` (the gradient overwrites the logits);
- ``labelsmooth_with_grad``: ``labelsmooth.cross_entropy_with_grad``, the loss and its gradient in
  closed form, without autograd.

Method:

- Every (provider, size) runs in a fresh subprocess, so compile caches, allocator state and peak
  counters of one provider never leak into another.
- Time: median wall time of ``repeats`` calls of forward + ``torch.autograd.grad(loss, logits)``,
  after warm-up calls (which is where compilation happens). Before every call, outside the timed
  region, the logits are made afresh as the output of an operation (``leaf * 1``), as when they come
  from a layer: ``inplace_backward`` writes the gradient into such logits, while a leaf's storage
  (the user's own values) gets a new buffer instead. The gradient is returned rather than
  accumulated into a ``.grad``.
- Peak memory: the extra resident memory one forward+backward needs on top of its inputs,
  gradient included: Linux's peak RSS (``VmHWM``) is reset to the current RSS through
  ``/proc/self/clear_refs`` right before the call and read right after it. glibc is told to serve
  every allocation of 64 KiB or more with mmap (``MALLOC_MMAP_THRESHOLD_``), so freed tensors go
  back to the OS at once and the RSS follows live tensors; torch's CPU allocator caches nothing.
  (``tracemalloc`` does not see torch's allocations.) At N=256, K=10 the tensors are a few KiB
  and the figure is dominated by page granularity; it is recorded, not meaningful.

The machine is shared: the 1-minute load average is recorded with each measurement, and timings
taken under load are noisy. Workers run with ``OMP_WAIT_POLICY=PASSIVE`` unless it is set already:
on oversubscribed cores, OpenMP threads that spin after each parallel region stall even 2560-element
ops (``torch.log_softmax`` included) for ~16 ms at a time, which swamps every provider alike.
Run from the repository root::

    .venv/bin/python benchmarks/loss_cpu.py                # every provider, both sizes
    .venv/bin/python benchmarks/loss_cpu.py --sizes 256x10 --providers torch labelsmooth

Rows go to ``benchmarks/results/loss_cpu.csv`` (long format, see ``_record.py``); a markdown table
is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

import labelsmooth as ls

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import Recorder  # noqa: E402

EPS = 0.1
SIZES = {"4096x32000": (4096, 32000), "256x10": (256, 10)}
REPEATS = {"4096x32000": 5, "256x10": 200}
MMAP_THRESHOLD = 64 * 1024


@dataclass(frozen=True)
class Provider:
    make: Callable[[], Callable]  # builds loss(logits, target), e.g. compiling it
    warmup: int
    returns_grad: bool = False  # loss(logits, target) returns (loss, grad) itself


def _compiled(fn: Callable, **compile_args) -> Callable[[], Callable]:
    return lambda: torch.compile(fn, **compile_args)


def _torch_loss(logits, target):
    return F.cross_entropy(logits, target, label_smoothing=EPS)


def _labelsmooth_loss(logits, target):
    return ls.cross_entropy(logits, target, label_smoothing=EPS)


def _labelsmooth_unchecked_loss(logits, target):
    return ls.cross_entropy(logits, target, label_smoothing=EPS, validate_args=False)


def _labelsmooth_inplace_loss(logits, target):
    return ls.cross_entropy(logits, target, label_smoothing=EPS, inplace_backward=True)


def _labelsmooth_with_grad(logits, target):
    return ls.cross_entropy_with_grad(logits, target, label_smoothing=EPS)


PROVIDERS = {
    "torch": Provider(lambda: _torch_loss, warmup=1),
    "torch_compiled": Provider(_compiled(_torch_loss), warmup=2),
    "labelsmooth": Provider(lambda: _labelsmooth_loss, warmup=1),
    "labelsmooth_compiled": Provider(_compiled(_labelsmooth_unchecked_loss, fullgraph=True), warmup=2),
    "labelsmooth_inplace": Provider(lambda: _labelsmooth_inplace_loss, warmup=1),
    "labelsmooth_with_grad": Provider(lambda: _labelsmooth_with_grad, warmup=1, returns_grad=True),
}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE).group(1))


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure(provider_name: str, size: str) -> dict:
    """Run inside the worker process: time and peak extra memory of one provider at one size."""
    provider = PROVIDERS[provider_name]
    rows, num_classes = SIZES[size]
    g = torch.Generator().manual_seed(0)
    original = torch.randn(rows, num_classes, generator=g)
    target = torch.randint(0, num_classes, (rows,), generator=g)
    leaf = original.requires_grad_()
    loss_fn = provider.make()

    def fresh_logits() -> torch.Tensor:
        """New logits with a graph behind them, like a layer's output (outside the timed region)."""
        return leaf * 1.0

    def forward_backward(logits: torch.Tensor) -> None:
        if provider.returns_grad:
            loss_fn(logits, target)
        else:
            torch.autograd.grad(loss_fn(logits, target), logits)

    for _ in range(provider.warmup):
        forward_backward(fresh_logits())
    times = []
    for _ in range(REPEATS[size]):
        logits = fresh_logits()
        start = time.perf_counter()
        forward_backward(logits)
        times.append(time.perf_counter() - start)
        del logits
    logits = fresh_logits()
    before = _status_kib("VmRSS")
    _reset_peak_rss()
    forward_backward(logits)
    peak = _status_kib("VmHWM")
    return {"ms": 1e3 * statistics.median(times), "peak_mib": (peak - before) / 1024,
            "loadavg": os.getloadavg()[0], "threads": torch.get_num_threads()}


def run_worker(provider: str, size: str) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    out = subprocess.run([sys.executable, __file__, "--worker", provider, size], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def markdown_table(results: dict[tuple[str, str], dict]) -> str:
    lines = ["| size (N x K), fp32 | provider | fwd+bwd median (ms) | vs torch eager | peak extra memory (MiB) "
             "| load avg |", "|---|---|---:|---:|---:|---:|"]
    for (size, provider), r in results.items():
        base = results.get((size, "torch"))
        ratio = f"{r['ms'] / base['ms']:.2f}x" if base else "-"
        lines.append(f"| {size} | {provider} | {r['ms']:.3g} | {ratio} | {r['peak_mib']:.1f} | {r['loadavg']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--providers", nargs="+", default=list(PROVIDERS), choices=list(PROVIDERS))
    parser.add_argument("--worker", nargs=2, metavar=("PROVIDER", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(*args.worker)))
        return
    recorder = Recorder("loss_cpu")
    results = {}
    for size in args.sizes:
        for provider in args.providers:
            r = results[size, provider] = run_worker(provider, size)
            print(f"{size} {provider}: {r['ms']:.3g} ms, {r['peak_mib']:.1f} MiB (load {r['loadavg']:.1f})",
                  file=sys.stderr)
            for metric, key in (("fwd_bwd_median_ms", "ms"), ("peak_extra_rss_mib", "peak_mib"),
                                ("loadavg_1min", "loadavg"), ("torch_threads", "threads")):
                recorder.add("cross_entropy_label_smoothing_0.1", provider, size, "float32", metric, r[key])
    print(markdown_table(results))
    print(f"\nrows appended to {recorder.save()}")


if __name__ == "__main__":
    main()
