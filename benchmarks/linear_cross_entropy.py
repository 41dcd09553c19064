"""Benchmark: fused linear + label-smoothed CE against the materialised logits, forward + backward.

Providers (side by side, same inputs, label_smoothing=0.1, reduction="mean"):
  materialized   F.linear(hidden, weight) then F.cross_entropy(..., label_smoothing=0.1)
  labelsmooth    labelsmooth.linear_cross_entropy(hidden, weight, target, label_smoothing=0.1)
  liger          LigerFusedLinearCrossEntropyLoss(label_smoothing=0.1) (CUDA, when installed)

Peak extra memory is what one forward + backward adds on top of the inputs, after a small
warm-up call (so code pages and kernels are loaded); it includes the .grad tensors, which every
provider produces:
  cpu:  a fresh subprocess per provider builds the inputs, resets the kernel's high-water mark
        (/proc/self/clear_refs) and reads VmHWM - VmRSS after one forward + backward;
  cuda: torch.cuda.max_memory_allocated() - memory_allocated() after reset_peak_memory_stats().
Time: median wall and CPU time of --repeats forward + backward runs per provider, interleaved
(A B A B ...) after one warm-up each, so a shared machine's load hits every provider alike.

    python benchmarks/linear_cross_entropy.py                 # CPU: N=8192, D=512, V=32768, fp32
    python benchmarks/linear_cross_entropy.py --device cuda   # GPU: N=16384, D=4096, V=128256, bf16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import Recorder  # noqa: E402
from labelsmooth import linear_cross_entropy  # noqa: E402  (imported now, not while measured)

EPS = 0.1
CASES = {"cpu": dict(n=8192, d=512, v=32768, dtype="float32"),
         "cuda": dict(n=16384, d=4096, v=128256, dtype="bfloat16")}


def materialized(hidden, weight, target):
    return F.cross_entropy(F.linear(hidden, weight), target, label_smoothing=EPS)


def fused(hidden, weight, target):
    return linear_cross_entropy(hidden, weight, target, label_smoothing=EPS)


def liger(hidden, weight, target):
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    out = LigerFusedLinearCrossEntropyLoss(label_smoothing=EPS)(weight, hidden, target)
    return out[0] if isinstance(out, tuple) else out


PROVIDERS = {"materialized": materialized, "labelsmooth": fused, "liger": liger}


def available(device: str) -> list[str]:
    names = ["materialized", "labelsmooth"]
    if device == "cuda" and find_spec("liger_kernel") is not None:
        names.append("liger")
    return names


def make_inputs(n: int, d: int, v: int, dtype: torch.dtype, device: str):
    g = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(n, d, generator=g, device=device).mul_(0.5).to(dtype).requires_grad_()
    weight = torch.randn(v, d, generator=g, device=device).mul_(d ** -0.5).to(dtype).requires_grad_()
    target = torch.randint(0, v, (n,), generator=g, device=device)
    return hidden, weight, target


def forward_backward(fn, hidden, weight, target) -> float:
    hidden.grad = weight.grad = None
    loss = fn(hidden, weight, target)
    loss.backward()
    return loss.item()


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_extra_memory(provider: str, n: int, d: int, v: int, dtype: str, device: str) -> dict:
    """Peak extra memory (MiB) of one forward + backward, and its loss."""
    fn = PROVIDERS[provider]
    # A small call first loads code pages and kernels (cuBLAS/oneDNN, Triton), so the measured
    # peak is the call's data, not the library's code.
    forward_backward(fn, *make_inputs(256, d, 1024, getattr(torch, dtype), device))
    inputs = make_inputs(n, d, v, getattr(torch, dtype), device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        loss = forward_backward(fn, *inputs)
        return dict(loss=loss, extra_mib=(torch.cuda.max_memory_allocated() - base) / 2**20)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    base = _kib("VmRSS")
    loss = forward_backward(fn, *inputs)
    return dict(loss=loss, extra_mib=(_kib("VmHWM") - base) / 1024)


def in_fresh_process(provider: str, args) -> dict:
    """:func:`peak_extra_memory` in a new interpreter, so its peak RSS belongs to this provider alone."""
    command = [sys.executable, __file__, "--child", provider, "--device", args.device,
               "--size", str(args.n), str(args.d), str(args.v), "--dtype", args.dtype]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def interleaved_times(providers: list[str], args) -> dict[str, dict[str, float]]:
    """Median wall and CPU (process, all threads) time in ms per provider, runs interleaved.

    Interleaving (A B A B ...) after one warm-up each exposes the providers to the same load on a
    shared machine; CPU time is the less load-sensitive of the two on CPU.
    """
    inputs = make_inputs(args.n, args.d, args.v, getattr(torch, args.dtype), args.device)
    samples = {p: {"time_ms": [], "cpu_time_ms": []} for p in providers}
    for round_ in range(args.repeats + 1):
        for provider in providers:
            if args.device == "cuda":
                torch.cuda.synchronize()
            wall, cpu = time.perf_counter(), time.process_time()
            forward_backward(PROVIDERS[provider], *inputs)
            if args.device == "cuda":
                torch.cuda.synchronize()
            if round_:  # round 0 is the warm-up
                samples[provider]["time_ms"].append((time.perf_counter() - wall) * 1e3)
                samples[provider]["cpu_time_ms"].append((time.process_time() - cpu) * 1e3)
    return {p: {k: statistics.median(v) for k, v in s.items()} for p, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=sorted(CASES), default="cpu")
    parser.add_argument("--size", nargs=3, type=int, metavar=("N", "D", "V"),
                        help="override the case's tokens, hidden size and vocabulary")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=3, choices=range(1, 101), metavar="1..100")
    parser.add_argument("--child", choices=sorted(PROVIDERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    case = CASES[args.device]
    args.n, args.d, args.v = args.size or (case["n"], case["d"], case["v"])
    args.dtype = args.dtype or case["dtype"]
    if args.child:
        print(json.dumps(peak_extra_memory(args.child, args.n, args.d, args.v, args.dtype, args.device)))
        return

    providers = available(args.device)
    load_before = os.getloadavg()[0]
    results = {p: (in_fresh_process(p, args) if args.device == "cpu"
                   else peak_extra_memory(p, args.n, args.d, args.v, args.dtype, args.device))
               for p in providers}
    for provider, times in interleaved_times(providers, args).items():
        results[provider].update(times)
    load_after = os.getloadavg()[0]

    recorder = Recorder("linear_cross_entropy")
    size = f"N={args.n},D={args.d},V={args.v}"
    base = results["materialized"]
    print(f"{size} {args.dtype} on {recorder.hardware}; load average {load_before:.2f} -> {load_after:.2f}")
    print(f"{'provider':14} {'wall ms':>9} {'CPU ms':>9} {'extra MiB':>10} {'wall ratio':>11} "
          f"{'CPU ratio':>10} {'memory /':>9} {'loss':>9}")
    for provider, r in results.items():
        r["time_vs_materialized"] = r["time_ms"] / base["time_ms"]
        r["cpu_time_vs_materialized"] = r["cpu_time_ms"] / base["cpu_time_ms"]
        r["memory_reduction_vs_materialized"] = base["extra_mib"] / max(r["extra_mib"], 1e-9)
        print(f"{provider:14} {r['time_ms']:9.0f} {r['cpu_time_ms']:9.0f} {r['extra_mib']:10.1f} "
              f"{r['time_vs_materialized']:11.2f} {r['cpu_time_vs_materialized']:10.2f} "
              f"{r['memory_reduction_vs_materialized']:9.1f} {r['loss']:9.5f}")
        for metric in ("time_ms", "cpu_time_ms", "extra_mib", "time_vs_materialized",
                       "cpu_time_vs_materialized", "memory_reduction_vs_materialized", "loss"):
            recorder.add("linear_cross_entropy_fwd_bwd", provider, size, args.dtype,
                         "peak_extra_mib" if metric == "extra_mib" else metric, r[metric])
    recorder.add("linear_cross_entropy_fwd_bwd", "machine", size, args.dtype, "load_avg_1min",
                 max(load_before, load_after))
    print(f"wrote {recorder.save()}")


if __name__ == "__main__":
    main()
