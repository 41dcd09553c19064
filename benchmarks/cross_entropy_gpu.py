"""GPU benchmark: the fused Triton label-smoothed CE against torch, torch.compile and Liger-Kernel.

One command on a CUDA machine (it exits with a message elsewhere):

    python benchmarks/cross_entropy_gpu.py            # full grid, about 10-15 minutes on an H100
    python benchmarks/cross_entropy_gpu.py --quick    # one small size, a smoke run

1. Correctness first, against the torch path (``impl="torch"``, computed on row chunks so that it
   never indexes past 2^31): fp32, bf16, odd sizes, every option, and one case with N x K above
   2^31 elements. A mismatch stops the run before anything is timed.
2. Per size (N in {4096, 16384}, K in {32000, 128256}, bf16 and fp32) the device's copy bandwidth
   (``dst.copy_(src)`` of a logits-sized buffer: read + write), then for each provider the median
   forward + backward time (``triton.testing.do_bench``, which clears L2 between runs), the
   effective bandwidth against the floor of reading the logits once and writing the gradient
   once (2 N K bytes-per-element), its fraction of the copy bandwidth, and the extra peak memory
   over the inputs (``max_memory_allocated`` minus what was allocated before), also as a
   multiple of the logits' size. label_smoothing=0.1, reduction="mean" everywhere.

Providers:
  labelsmooth-triton          labelsmooth.cross_entropy(impl="triton"): statistics, then backward
  labelsmooth-triton-inplace  the same with inplace_backward=True (no gradient buffer)
  labelsmooth-fused           ops.cross_entropy.fused_cross_entropy_with_grad(inplace_backward=True):
                              gradient written during forward, logits read once from memory
  torch                       F.cross_entropy(label_smoothing=0.1), eager
  torch.compile               the same under torch.compile
  liger                       liger_kernel's LigerCrossEntropyLoss (when installed; in place too)

Rows go to benchmarks/results/cross_entropy_gpu.csv (long format, with the GPU's name).
"""

from __future__ import annotations

import argparse
import functools
import sys
from importlib.util import find_spec
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import Recorder  # noqa: E402

EPS = 0.1
SIZES = [(4096, 32000), (4096, 128256), (16384, 32000), (16384, 128256)]
QUICK_SIZES = [(1024, 32000)]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# (name, rows, classes, dtype, options): odd sizes, every option, and N x K > 2^31 elements.
CORRECTNESS_CASES = [
    ("fp32-odd", 1031, 32003, torch.float32, dict(label_smoothing=0.1)),
    ("bf16-odd", 1031, 50257, torch.bfloat16, dict(label_smoothing=0.1)),
    ("fp32-options", 517, 3001, torch.float32,
     dict(label_smoothing=0.2, distribution="non_target", weight="random", z_loss=1e-4, softcap=30.0,
          ignore_every=7)),
    ("bf16-prior-3d", 64, 4099, torch.bfloat16, dict(label_smoothing=0.1, distribution="prior", extra_dim=8)),
    ("bf16-over-2^31", 16384, 131073, torch.bfloat16, dict(label_smoothing=0.1)),
]
REFERENCE_CHUNK_ELEMENTS = 2**28


# 1. Providers: (x, y) -> loss ----------------------------------------------------------------------


def _labelsmooth(**options):
    import labelsmooth
    return lambda x, y: labelsmooth.cross_entropy(x, y, label_smoothing=EPS, impl="triton", **options)


def _labelsmooth_fused():
    from labelsmooth.ops.cross_entropy import fused_cross_entropy_with_grad
    return lambda x, y: fused_cross_entropy_with_grad(x, y, label_smoothing=EPS, inplace_backward=True)


def _torch_eager():
    return functools.partial(F.cross_entropy, label_smoothing=EPS)


def _torch_compile():
    return torch.compile(functools.partial(F.cross_entropy, label_smoothing=EPS), dynamic=False)


def _liger():
    from liger_kernel.transformers import LigerCrossEntropyLoss
    return LigerCrossEntropyLoss(label_smoothing=EPS)


# name -> (factory, available); factories are called once per size (a fresh compile cache).
PROVIDERS = {
    "labelsmooth-triton": (_labelsmooth, True),
    "labelsmooth-triton-inplace": (functools.partial(_labelsmooth, inplace_backward=True), True),
    "labelsmooth-fused": (_labelsmooth_fused, True),
    "torch": (_torch_eager, True),
    "torch.compile": (_torch_compile, True),
    "liger": (_liger, find_spec("liger_kernel") is not None),
}


# 2. Correctness against the torch path -------------------------------------------------------------


def _case_inputs(rows, classes, dtype, options, device):
    generator = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(rows, classes, generator=generator, device=device, dtype=torch.float32)
    logits = (4 * logits).to(dtype)
    target = torch.randint(0, classes, (rows,), generator=generator, device=device)
    kwargs = {k: v for k, v in options.items() if k not in ("weight", "ignore_every", "extra_dim")}
    if "ignore_every" in options:
        target[:: options["ignore_every"]] = -100
    if options.get("weight") == "random":
        kwargs["weight"] = 0.5 + torch.rand(classes, generator=generator, device=device)
    if options.get("distribution") == "prior":
        kwargs["distribution"] = torch.rand(classes, generator=generator, device=device,
                                            dtype=torch.float64).softmax(0).float()
    if "extra_dim" in options:  # (N, K, d1): rows -> (rows / d1, K, d1)
        d1 = options["extra_dim"]
        logits = logits.reshape(rows // d1, d1, classes).movedim(2, 1)
        target = target.reshape(rows // d1, d1)
    return logits, target, kwargs


def _reference_sum_and_grad(logits, target, kwargs):
    """impl="torch" with reduction="sum", over row chunks of at most 2^28 elements."""
    import labelsmooth
    rows_per_chunk = max(1, REFERENCE_CHUNK_ELEMENTS // logits[0].numel())
    total = torch.zeros((), dtype=torch.float64, device=logits.device)
    grad = torch.empty_like(logits)
    for start in range(0, logits.shape[0], rows_per_chunk):
        chunk = logits[start:start + rows_per_chunk].detach().clone().requires_grad_()
        loss = labelsmooth.cross_entropy(chunk, target[start:start + rows_per_chunk], reduction="sum",
                                         impl="torch", **kwargs)
        loss.float().backward()
        total += loss.detach().double()
        grad[start:start + rows_per_chunk] = chunk.grad
    return total, grad


def _sum_and_grad(loss_fn, logits, target, kwargs):
    x = logits.detach().clone().requires_grad_()
    loss = loss_fn(x, target, reduction="sum", **kwargs)
    loss.float().backward()
    return loss.detach().double(), x.grad


def check_correctness(recorder: Recorder, cases=CORRECTNESS_CASES, device="cuda") -> bool:
    """Sum of losses and gradients of impl="triton" and the fused entry against impl="torch"."""
    import labelsmooth
    from labelsmooth.ops.cross_entropy import fused_cross_entropy_with_grad
    candidates = {"labelsmooth-triton": functools.partial(labelsmooth.cross_entropy, impl="triton"),
                  "labelsmooth-fused": fused_cross_entropy_with_grad}
    ok = True
    for name, rows, classes, dtype, options in cases:
        logits, target, kwargs = _case_inputs(rows, classes, dtype, options, device)
        expected_loss, expected_grad = _reference_sum_and_grad(logits, target, kwargs)
        for provider, loss_fn in candidates.items():
            loss, grad = _sum_and_grad(loss_fn, logits, target, kwargs)
            loss_error = ((loss - expected_loss).abs() / expected_loss.abs().clamp_min(1e-30)).item()
            grad_error = (grad.float() - expected_grad.float()).abs().max().item()
            grad_scale = expected_grad.float().abs().max().item()
            # fp32: a few ulps. bf16: both are fp32 values rounded to bf16 (the loss too), so they
            # may fall one bf16 ulp (2^-8 relative) apart.
            tolerance = 1e-5 if dtype == torch.float32 else 2**-7
            passed = loss_error <= tolerance and grad_error <= tolerance * max(grad_scale, 1e-30)
            ok &= passed
            size = f"{tuple(logits.shape)} = {logits.numel():.3g} elements"
            print(f"  {name:16s} {provider:20s} {size:36s} loss rel err {loss_error:.2e}  "
                  f"grad max abs err {grad_error:.2e} (max |grad| {grad_scale:.2e})  "
                  f"{'ok' if passed else 'MISMATCH'}")
            recorder.add(f"correctness-{name}", provider, size, str(dtype).removeprefix("torch."),
                         "loss_rel_error", loss_error)
            recorder.add(f"correctness-{name}", provider, size, str(dtype).removeprefix("torch."),
                         "grad_max_abs_error", grad_error)
            del loss, grad
        del logits, target, expected_grad
        torch.cuda.empty_cache()
    return ok


# 3. Timing, bandwidth, memory ------------------------------------------------------------------------


def _median_ms(fn, grad_to_none=None) -> float:
    import triton.testing
    return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")


def copy_bandwidth_gbps(nbytes: int, device="cuda") -> float:
    """Device-to-device copy: bytes read + bytes written per second."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src))
    return 2 * nbytes / ms / 1e6


def measure(loss_fn, logits, target) -> dict:
    """Median forward + backward time and extra peak memory over the inputs, for one provider."""
    x = logits.detach().clone().requires_grad_()

    def step():
        loss_fn(x, target).backward()

    step()  # compile / autotune / first-call work, outside the measurements
    x.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    extra_peak = torch.cuda.max_memory_allocated() - before
    x.grad = None
    ms = _median_ms(step, grad_to_none=[x])
    return dict(ms=ms, extra_peak=extra_peak)


def benchmark(recorder: Recorder, sizes, providers, device="cuda") -> list[dict]:
    results = []
    for dtype_name, dtype in DTYPES.items():
        for n, k in sizes:
            size = f"N={n},K={k}"
            logits = torch.randn(n, k, device=device, dtype=dtype)
            target = torch.randint(0, k, (n,), device=device)
            logits_bytes = logits.numel() * logits.element_size()
            copy = copy_bandwidth_gbps(logits_bytes, device)
            recorder.add("copy", "torch", size, dtype_name, "GBps", copy)
            print(f"{size} {dtype_name}: copy bandwidth {copy:.0f} GB/s")
            for provider in providers:
                factory, _ = PROVIDERS[provider]
                try:
                    m = measure(factory(), logits, target)
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    print(f"  {provider:28s} out of memory")
                    recorder.add("fwd+bwd", provider, size, dtype_name, "out_of_memory", 1)
                    continue
                gbps = 2 * logits_bytes / m["ms"] / 1e6
                row = dict(provider=provider, size=size, dtype=dtype_name, ms=m["ms"], gbps=gbps,
                           fraction=gbps / copy, extra_mib=m["extra_peak"] / 2**20,
                           extra_over_logits=m["extra_peak"] / logits_bytes)
                results.append(row)
                for metric, key in [("median_ms", "ms"), ("effective_GBps", "gbps"),
                                    ("fraction_of_copy_bandwidth", "fraction"), ("extra_peak_MiB", "extra_mib"),
                                    ("extra_peak_over_logits", "extra_over_logits")]:
                    recorder.add("fwd+bwd", provider, size, dtype_name, metric, row[key])
                print(f"  {provider:28s} {m['ms']:9.3f} ms  {gbps:7.0f} GB/s  {row['fraction']:6.1%} of copy  "
                      f"extra peak {row['extra_mib']:9.1f} MiB ({row['extra_over_logits']:.2f}x logits)")
            del logits, target
            torch.cuda.empty_cache()
    return results


def print_table(results: list[dict]) -> None:
    """Markdown table, with each provider's time relative to labelsmooth-fused on the same size."""
    fused = {(r["size"], r["dtype"]): r["ms"] for r in results if r["provider"] == "labelsmooth-fused"}
    print("\n| size | dtype | provider | fwd+bwd ms | GB/s | of copy BW | extra peak (x logits) | "
          "time / labelsmooth-fused |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        relative = r["ms"] / fused[(r["size"], r["dtype"])] if (r["size"], r["dtype"]) in fused else float("nan")
        print(f"| {r['size']} | {r['dtype']} | {r['provider']} | {r['ms']:.3f} | {r['gbps']:.0f} | "
              f"{r['fraction']:.1%} | {r['extra_over_logits']:.2f} | {relative:.2f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small size and no large correctness case")
    parser.add_argument("--providers", nargs="+", choices=sorted(PROVIDERS), default=None,
                        help="subset of providers (default: every available one)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("cross_entropy_gpu.py measures CUDA kernels and needs a CUDA GPU; none is available here "
              "(torch.cuda.is_available() is False). The kernels' CPU tests: "
              "pytest tests/test_triton_cross_entropy.py", file=sys.stderr)
        return 2
    if find_spec("triton") is None:
        print("cross_entropy_gpu.py needs triton (pip install 'labelsmooth[gpu]')", file=sys.stderr)
        return 2
    providers = args.providers or [name for name, (_, available) in PROVIDERS.items() if available]
    recorder = Recorder("cross_entropy_gpu")
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("correctness against impl='torch':")
    cases = [c for c in CORRECTNESS_CASES if c[1] * c[2] < 2**31] if args.quick else CORRECTNESS_CASES
    if not check_correctness(recorder, cases):
        recorder.save()
        print("correctness check failed: not timing a kernel whose results differ", file=sys.stderr)
        return 1
    results = benchmark(recorder, QUICK_SIZES if args.quick else SIZES, providers)
    print_table(results)
    print(f"\nrows appended to {recorder.save()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
