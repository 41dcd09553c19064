"""The steps of the one-shot GPU acceptance (``make gpu-check``, ``benchmarks/gpu_acceptance.sh``).

Each step is ``python benchmarks/gpu_acceptance.py STEP [--dry-run]``; the shell script runs them
in order of value, each under its own time limit, and ``summary`` prints the table last. Rows go
to ``$OUT/gpu_acceptance.csv`` in the long format of ``_record.py`` (name, provider, size, dtype,
metric, value, git sha, hardware, date). ``--dry-run`` runs every step at tiny sizes on CPU
(Triton's interpreter, with the launch tables shrunk so both the resident and the streamed row
paths run), so the script keeps working without a GPU.

Steps: versions, exact (float64 references, fresh random inputs, outputs poisoned first), big
(one case above 2^31 elements), linear (against the materialised logits), vocab_parallel (nccl
at world size 1), lab (the seed protocol's 30 cells on the GPU against the CPU), timing (forward +
backward against torch, torch.compile and Liger, with the copy bandwidth and peak memory),
linear_timing (against Liger's fused linear loss and the materialised logits), sweep (block and
warps of the row kernels), summary.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _record import Recorder  # noqa: E402

OUT = Path(os.environ.get("OUT") or ROOT / "gpu-out")
EPS = 0.1


def setup(dry: bool) -> str:
    """The device; in a dry run the interpreter, and launch tables small enough to stream."""
    if not dry:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --dry-run for the CPU rehearsal")
        return "cuda"
    from labelsmooth.ops import utils
    utils.RESIDENT_ROW_LIMIT.update({4: 64, 8: 32})
    utils.STREAM_BLOCK.update({4: (32, 4), 8: (16, 4)})
    return "cpu"


def recorder() -> Recorder:
    r = Recorder("gpu_acceptance")
    r.path = OUT / "gpu_acceptance.csv"
    return r



def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||a - e|| / ||e|| in float64; nan anywhere counts as infinitely wrong."""
    a, e = actual.double(), expected.double()
    if not torch.isfinite(a).all():
        return float("inf")
    return ((a - e).norm() / e.norm().clamp_min(1e-300)).item()


def poison(device: str) -> None:
    """Fill the caching allocator's free blocks with NaN, so an unwritten output shows."""
    if device == "cuda":
        free = torch.cuda.mem_get_info()[0]
        block = torch.empty(min(free // 4, 8 * 2**30) // 4, device=device)
        block.fill_(float("nan"))
        del block


def median_ms(fn, device: str, grad_to_none=None) -> float:
    if device == "cuda":
        import triton.testing
        return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")
    times = []
    for _ in range(1):  # the dry run only checks that the step works
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


# 1. versions ------------------------------------------------------------------------------------------


def step_versions(device: str, dry: bool) -> bool:
    import triton
    r = recorder()
    print(f"python {platform.python_version()}, torch {torch.__version__}, triton {triton.__version__}, "
          f"liger-kernel {'present' if find_spec('liger_kernel') else 'absent'}")
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        print(f"GPU {props.name}, {props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB, "
              f"CUDA {torch.version.cuda}")
        try:
            print(subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.mem,clocks.max.sm,"
                                  "temperature.gpu,power.draw", "--format=csv"], capture_output=True, text=True,
                                 timeout=20).stdout.strip())
        except (OSError, subprocess.SubprocessError) as error:
            print(f"nvidia-smi: {error}")
    r.add("versions", f"torch {torch.__version__} triton {triton.__version__}", "-", "-", "ok", 1)
    r.save()
    return True


# 2. exact checks against float64 ---------------------------------------------------------------------


def _entries():
    import labelsmooth as ls
    from labelsmooth.ops.cross_entropy import fused_cross_entropy_with_grad
    return {
        "triton": lambda x, y, **kw: ls.cross_entropy(x, y, impl="triton", **kw),
        "triton-inplace": lambda x, y, **kw: ls.cross_entropy(x, y, impl="triton", inplace_backward=True, **kw),
        "fused": fused_cross_entropy_with_grad,
        "fused-inplace": functools.partial(fused_cross_entropy_with_grad, inplace_backward=True),
    }


def _option_sets(k: int, n: int, device: str):
    g = torch.Generator(device="cpu").manual_seed(k)
    yield "plain", {}
    yield "weights+ignore", dict(weight=(0.5 + torch.rand(k, generator=g)).to(device), ignore=3)
    yield "all-ignored", dict(ignore=1)
    yield "non_target", dict(distribution="non_target")
    prior = torch.rand(k, generator=g, dtype=torch.float64).softmax(0).float().to(device)
    yield "prior+z_loss", dict(distribution=prior, z_loss=1e-3)
    if k <= 4099:
        yield "class_conditional", dict(distribution=torch.rand(k, k, generator=g, dtype=torch.float64)
                                        .softmax(1).float().to(device))
    yield "per_sample_eps", dict(label_smoothing=torch.linspace(-0.2, 0.9, n).to(device))
    yield "negative_eps+softcap", dict(label_smoothing=-0.1, softcap=20.0)
    yield "3d", dict(shape=3)
    yield "4d", dict(shape=4)


def step_exact(device: str, dry: bool) -> bool:
    """Every entry against the dense float64 formula of tests/conftest.py on fresh random inputs."""
    from conftest import reference_cross_entropy
    r = recorder()
    widths = (130,) if dry else (10, 4099, 32000, 50257, 128256)  # dry: streamed rows (tests cover resident)
    dtypes = (torch.float32,) if dry else (torch.float32, torch.bfloat16, torch.float16)
    n = 8 if dry else 64
    entries = _entries()
    ok, worst = True, {}
    for k in widths:
        for dtype in dtypes:
            for name, options in _option_sets(k, n, device):
                options = dict(options)
                ignore_every, shape = options.pop("ignore", None), options.pop("shape", 2)
                options.setdefault("label_smoothing", EPS)
                x = (4 * torch.randn(n, k, device=device)).to(dtype)
                y = torch.randint(0, k, (n,), device=device)
                if ignore_every:
                    y[::ignore_every] = -100
                if shape > 2:  # (N, K, d1[, d2]) from the same rows
                    x = (x.reshape(n // 4, 4, k).movedim(2, 1) if shape == 3
                         else x.reshape(n // 4, 2, 2, k).movedim(3, 1))
                    y = y.reshape(x.shape[:1] + x.shape[2:])
                reference = x.detach().double().requires_grad_()
                ref_options = {key: v for key, v in options.items() if key not in ("label_smoothing", "weight")}
                expected = reference_cross_entropy(reference, y, eps=options["label_smoothing"],
                                                   weight=options.get("weight"), **ref_options)
                (expected_grad,) = torch.autograd.grad(expected, reference)
                for entry, fn in entries.items():
                    poison(device)
                    leaf = x.detach().clone().requires_grad_()
                    logits = leaf * 1  # not a leaf: in-place entries write into it
                    loss = fn(logits, y, **options)
                    (grad,) = torch.autograd.grad(loss, leaf)
                    errors = (relative_error(loss, expected), relative_error(grad, expected_grad))
                    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
                    passed = all(e <= tolerance for e in errors) or (expected.abs().item() == 0 and loss.item() == 0)
                    ok &= passed
                    key = (entry, str(dtype))
                    worst[key] = max(worst.get(key, 0.0), *errors)
                    if not passed:
                        print(f"MISMATCH {entry} K={k} {dtype} {name}: loss rel err {errors[0]:.2e}, "
                              f"grad rel err {errors[1]:.2e}")
    for (entry, dtype), error in sorted(worst.items()):
        print(f"  {entry:15s} {dtype:15s} worst relative error {error:.2e}")
        r.add("exact-worst-relative-error", entry, f"K in {widths}", dtype.removeprefix("torch."), "rel_error", error)
    r.add("exact", "all", f"K in {widths}", "-", "passed", int(ok))
    r.save()
    print("exact: " + ("all cases within tolerance" if ok else "MISMATCHES above"))
    return ok


# 3. one case above 2^31 elements ---------------------------------------------------------------------


def step_big(device: str, dry: bool) -> bool:
    """16384 x 131073 bf16 (2.15e9 elements): loss against float64 of sampled rows' terms, and those
    rows' gradients, for the fused in-place entry and the plain one."""
    r = recorder()
    n, k = (4, 300) if dry else (16384, 131073)
    x = torch.randn(n, k, device=device).to(torch.bfloat16)
    y = torch.randint(0, k, (n,), device=device)
    rows = torch.tensor([0, n // 2, n - 1], device=device)
    sample = x[rows].double().requires_grad_()
    expected_rows = F.cross_entropy(sample, y[rows], label_smoothing=EPS, reduction="none")
    (expected_grad,) = torch.autograd.grad(expected_rows.sum() / n, sample)
    ok = True
    for entry in ("fused-inplace", "triton"):
        poison(device)
        leaf = x.detach().clone().requires_grad_() if entry == "triton" else None
        logits = leaf * 1 if leaf is not None else x.clone().requires_grad_() * 1
        loss = _entries()[entry](logits, y, label_smoothing=EPS, reduction="none")
        (loss.sum() / n).backward()
        grad = leaf.grad if leaf is not None else logits.detach()  # the fused in-place entry wrote it there
        errors = (relative_error(loss[rows], expected_rows), relative_error(grad[rows], expected_grad))
        passed = all(e <= 1e-2 for e in errors)
        ok &= passed
        print(f"  {entry:15s} {n} x {k} = {n * k:.3g} elements: loss rel err {errors[0]:.2e}, "
              f"grad rel err {errors[1]:.2e} {'ok' if passed else 'MISMATCH'}")
        r.add("big", entry, f"{n}x{k}", "bfloat16", "passed", int(passed))
        del logits, loss, grad, leaf
        if device == "cuda":
            torch.cuda.empty_cache()
    r.save()
    return ok


# 4. linear loss against the materialised logits -------------------------------------------------------


def step_linear(device: str, dry: bool) -> bool:
    import labelsmooth as ls
    r = recorder()
    n, d, v = (9, 8, 70) if dry else (2048, 1024, 50257)
    ok = True
    for case, hidden_dtype, weight_dtype in (("bf16", torch.bfloat16, torch.bfloat16),
                                             ("fp32", torch.float32, torch.float32),
                                             ("bf16-hidden-fp32-head", torch.bfloat16, torch.float32)):
        h = (torch.randn(n, d, device=device) * 0.5).to(hidden_dtype).requires_grad_()
        w = (torch.randn(v, d, device=device) * d ** -0.5).to(weight_dtype).requires_grad_()
        y = torch.randint(0, v, (n,), device=device)
        y[::7] = -100
        loss = ls.linear_cross_entropy(h, w, y, label_smoothing=EPS, z_loss=1e-4, impl="triton")
        grads = torch.autograd.grad(loss, (h, w))
        h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
        logits = F.linear(h64, w64)
        expected = F.cross_entropy(logits, y, label_smoothing=EPS) + 1e-4 * (
            torch.logsumexp(logits, 1)[y != -100] ** 2).mean()
        expected_grads = torch.autograd.grad(expected, (h64, w64))
        errors = [relative_error(loss, expected)] + [relative_error(g, e) for g, e in zip(grads, expected_grads)]
        tolerance = 1e-4 if case == "fp32" else 2e-2  # tf32-free fp32 GEMMs; bf16 operands and tiles
        passed = all(e <= tolerance for e in errors)
        ok &= passed
        print(f"  {case:22s} loss {errors[0]:.2e}  dh {errors[1]:.2e}  dW {errors[2]:.2e}  "
              f"{'ok' if passed else 'MISMATCH'}")
        r.add("linear-exact", case, f"N={n},D={d},V={v}", str(hidden_dtype).removeprefix("torch."),
              "max_rel_error", max(errors))
    r.save()
    return ok


# 5. vocab-parallel loss, world size 1 ---------------------------------------------------------------


def step_vocab_parallel(device: str, dry: bool) -> bool:
    import torch.distributed as dist

    import labelsmooth.distributed as lsd
    backend = "nccl" if device == "cuda" else "gloo"
    dist.init_process_group(backend, init_method="tcp://127.0.0.1:29517", rank=0, world_size=1)
    try:
        x = torch.randn(64, 1000, device=device, requires_grad=True)
        y = torch.randint(0, 1000, (64,), device=device)
        loss = lsd.vocab_parallel_cross_entropy(x, y, EPS)
        (grad,) = torch.autograd.grad(loss, x)
        reference = x.detach().double().requires_grad_()
        expected = F.cross_entropy(reference, y, label_smoothing=EPS)
        (expected_grad,) = torch.autograd.grad(expected, reference)
        errors = (relative_error(loss, expected), relative_error(grad, expected_grad))
    finally:
        dist.destroy_process_group()
    passed = all(e <= 1e-5 for e in errors)
    print(f"  {backend} world size 1: loss rel err {errors[0]:.2e}, grad rel err {errors[1]:.2e}")
    r = recorder()
    r.add("vocab-parallel", backend, "64x1000", "float32", "passed", int(passed))
    r.save()
    return passed


# 6. the lab on the GPU ------------------------------------------------------------------------------


def _sweep(out: Path, device: str, epochs: int, seeds: int, dataset: str, data_dir: str | None) -> float:
    command = [sys.executable, "-m", "labelsmooth", "sweep", "--dataset", dataset, "--model", "seed-cnn",
               "--label-smoothing", "0", "0.05", "0.1", "--seeds", *map(str, range(seeds)), "--epochs", str(epochs),
               "--batch-size", "32", "--optimizer", "sgd", "--lr", "1e-3", "--momentum", "0.9",
               "--device", device, "--out", str(out), "--no-progress"]
    if dataset == "fashion-mnist":
        command += ["--train-fraction", "0.1"] + (["--data-dir", data_dir] if data_dir else [])
    else:  # digits: the dry run, a small share of it
        command += ["--train-fraction", "0.2", "--eval-batch-size", "100"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def step_lab(device: str, dry: bool) -> bool:
    """The seed protocol's cells (3 eps x 10 seeds) for N epochs on the device and on the CPU: wall
    time (200 epochs extrapolated from an N- and a 1-epoch run) and the cells' test metrics."""
    data_dir = os.environ.get("LABELSMOOTH_DATA") or (str(ROOT / ".data" / "fashion-mnist")
                                                      if (ROOT / ".data" / "fashion-mnist").is_dir() else None)
    fmnist = data_dir is not None or Path("/usr/share/datasets/fashion-mnist").is_dir()
    dataset = "fashion-mnist" if fmnist and not dry else "digits"
    if dataset == "digits":
        print("  Fashion-MNIST not found (.data/fashion-mnist or LABELSMOOTH_DATA): digits instead")
    seeds, epochs = (1, 2) if dry else (10, 3)  # 3 eps x 10 seeds: the protocol's 30 cells
    r = recorder()
    with tempfile.TemporaryDirectory() as tmp:
        tn = _sweep(Path(tmp) / "gpu", device, epochs, seeds, dataset, data_dir)
        t1 = tn if dry else _sweep(Path(tmp) / "one", device, 1, seeds, dataset, data_dir)  # dry: no extrapolation
        cpu = "gpu" if device == "cpu" else "cpu"  # the dry run is on the CPU already
        if cpu == "cpu":
            _sweep(Path(tmp) / "cpu", "cpu", epochs, seeds, dataset, data_dir)
        runs = {name: json.loads((Path(tmp) / where / "results.json").read_text())["runs"]
                for name, where in (("gpu", "gpu"), ("cpu", cpu))}
    protocol = tn + (200 - epochs) * (tn - t1) / (epochs - 1)
    gaps = [abs(g["test"]["accuracy"] - c["test"]["accuracy"]) for g, c in zip(runs["gpu"], runs["cpu"])]
    loss_gaps = [abs(g["test"]["loss"] - c["test"]["loss"]) for g, c in zip(runs["gpu"], runs["cpu"])]
    mean_gap = statistics.fmean(g["test"]["accuracy"] for g in runs["gpu"]) - \
        statistics.fmean(c["test"]["accuracy"] for c in runs["cpu"])
    print(f"  {dataset}: {len(runs['gpu'])} cells, {epochs} epochs in {tn:.1f} s (1 epoch {t1:.1f} s); "
          f"200 epochs extrapolated: {protocol:.0f} s")
    print(f"  device vs CPU after {epochs} epochs: mean test accuracy {mean_gap:+.4f}, largest cell gap "
          f"{max(gaps):.4f}, largest test-loss gap {max(loss_gaps):.4f}")
    size = f"{dataset},{len(runs['gpu'])} cells"
    r.add("lab", "sweep", size, "float32", f"wall_s_{epochs}_epochs", tn)
    r.add("lab", "sweep", size, "float32", "wall_s_200_epochs_extrapolated", protocol)
    r.add("lab", "sweep-vs-cpu", size, "float32", "max_cell_accuracy_gap", max(gaps))
    r.save()
    return max(gaps) <= 0.05  # different summation orders over a few epochs; a broken device path is far off


# 7. timings ----------------------------------------------------------------------------------------


def _providers(device: str, dry: bool) -> dict:
    import labelsmooth as ls
    from labelsmooth.ops.cross_entropy import fused_cross_entropy_with_grad
    providers = {
        "labelsmooth-fused-inplace": lambda x, y: fused_cross_entropy_with_grad(x, y, label_smoothing=EPS,
                                                                                inplace_backward=True),
        "labelsmooth-fused-inplace-novalidate": lambda x, y: fused_cross_entropy_with_grad(
            x, y, label_smoothing=EPS, inplace_backward=True, validate_args=False),
        "labelsmooth-fused-inplace-eps0": lambda x, y: fused_cross_entropy_with_grad(x, y, inplace_backward=True),
        "labelsmooth-triton": lambda x, y: ls.cross_entropy(x, y, label_smoothing=EPS, impl="triton"),
        "torch": functools.partial(F.cross_entropy, label_smoothing=EPS),
        "torch.compile": torch.compile(functools.partial(F.cross_entropy, label_smoothing=EPS), dynamic=False,
                                       backend="inductor" if device == "cuda" else "aot_eager"),
    }
    if find_spec("liger_kernel") is not None and not dry:
        from liger_kernel.transformers import LigerCrossEntropyLoss
        providers["liger"] = LigerCrossEntropyLoss(label_smoothing=EPS)
    else:
        print("  liger-kernel absent (or a dry run): no Liger rows")
    return providers


def _copy_gbps(nbytes: int, device: str) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device)
    return 2 * nbytes / ms / 1e6


def step_timing(device: str, dry: bool) -> bool:
    """Forward + backward, median of do_bench (L2 flushed), GB/s against one read and one write of
    the logits as a fraction of the copy bandwidth, and extra peak memory over the inputs."""
    r = recorder()
    sizes = [(8, 64)] if dry else [(16384, 128256), (4096, 128256), (16384, 32000), (4096, 32000)]
    dtypes = {"bf16": torch.bfloat16} if dry else {"bf16": torch.bfloat16, "fp32": torch.float32}
    providers = _providers(device, dry)
    for dtype_name, dtype in dtypes.items():
        for n, k in sizes:
            size = f"N={n},K={k}"
            logits = torch.randn(n, k, device=device).to(dtype)
            target = torch.randint(0, k, (n,), device=device)
            nbytes = logits.numel() * logits.element_size()
            copy = _copy_gbps(nbytes, device)
            r.add("copy", "torch", size, dtype_name, "GBps", copy)
            print(f"{size} {dtype_name}: copy {copy:.0f} GB/s")
            for name, fn in providers.items():
                if name == "torch.compile" and (n, k, dtype_name) != (sizes[0][0], sizes[0][1], "bf16"):
                    continue  # one compiled size: each shape compiles anew
                source = logits.detach().clone().requires_grad_()

                def step(fn=fn, source=source, target=target, copy_first="inplace" in name):
                    fn(source * 1 if copy_first else source, target).backward()
                try:
                    step()
                    if device == "cuda":
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                        before = torch.cuda.memory_allocated()
                    step()
                    extra = torch.cuda.max_memory_allocated() - before if device == "cuda" else float("nan")
                    ms = median_ms(step, device, grad_to_none=[source])
                except Exception as error:  # noqa: BLE001  (a provider's failure is a row, not the end)
                    print(f"  {name:40s} failed: {type(error).__name__}: {str(error)[:200]}")
                    r.add("fwd+bwd", name, size, dtype_name, "failed", 1)
                    continue
                gbps = 2 * nbytes / ms / 1e6
                for metric, value in (("median_ms", ms), ("GBps", gbps), ("fraction_of_copy", gbps / copy),
                                      ("extra_peak_MiB", extra / 2**20)):
                    r.add("fwd+bwd", name, size, dtype_name, metric, value)
                print(f"  {name:40s} {ms:9.3f} ms {gbps:7.0f} GB/s {gbps / copy:6.1%} of copy  "
                      f"extra peak {extra / 2**20:9.1f} MiB")
                del source
            del logits, target
            if device == "cuda":
                torch.cuda.empty_cache()
    r.save()
    return True


def step_linear_timing(device: str, dry: bool) -> bool:
    """labelsmooth.linear_cross_entropy (Triton tiles) against Liger's fused linear loss and the
    materialised logits, forward + backward, bf16, N=16384, D=4096, V=128256."""
    import labelsmooth as ls
    r = recorder()
    n, d, v = (16, 8, 70) if dry else (16384, 4096, 128256)
    h = (torch.randn(n, d, device=device) * 0.5).bfloat16().requires_grad_()
    w = (torch.randn(v, d, device=device) * d ** -0.5).bfloat16().requires_grad_()
    y = torch.randint(0, v, (n,), device=device)
    providers = {"labelsmooth": lambda: ls.linear_cross_entropy(h, w, y, label_smoothing=EPS,
                                                                impl="triton" if device == "cuda" or dry else "auto"),
                 "materialized": lambda: F.cross_entropy(F.linear(h, w), y, label_smoothing=EPS)}
    if find_spec("liger_kernel") is not None and not dry:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        liger = LigerFusedLinearCrossEntropyLoss(label_smoothing=EPS)
        liger_fp32 = LigerFusedLinearCrossEntropyLoss(label_smoothing=EPS, accum_dtype=torch.float32)
        providers["liger"] = lambda: liger(w, h, y)
        providers["liger-fp32-accumulation"] = lambda: liger_fp32(w, h, y)
    size = f"N={n},D={d},V={v}"
    for name, fn in providers.items():
        def step(fn=fn):
            out = fn()
            (out[0] if isinstance(out, tuple) else out).backward()
        try:
            step()
            if device == "cuda":
                h.grad = w.grad = None
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            step()
            extra = torch.cuda.max_memory_allocated() - before if device == "cuda" else float("nan")
            ms = median_ms(step, device, grad_to_none=[h, w])
        except Exception as error:  # noqa: BLE001
            print(f"  {name:26s} failed: {type(error).__name__}: {str(error)[:200]}")
            r.add("linear fwd+bwd", name, size, "bf16", "failed", 1)
            continue
        print(f"  {name:26s} {ms:9.2f} ms  extra peak {extra / 2**30:6.2f} GiB")
        r.add("linear fwd+bwd", name, size, "bf16", "median_ms", ms)
        r.add("linear fwd+bwd", name, size, "bf16", "extra_peak_GiB", extra / 2**30)
        h.grad = w.grad = None
    r.save()
    return True


def step_sweep(device: str, dry: bool) -> bool:
    """Streamed block/warps and resident warps of the row kernels (fused in-place entry, bf16)."""
    from labelsmooth.ops import utils
    from labelsmooth.ops.cross_entropy import fused_cross_entropy_with_grad
    r = recorder()
    cases = [(8, 130, "stream")] if dry else [(16384, 128256, "stream"), (16384, 32000, "stream"),
                                              (16384, 32000, "resident")]
    stream_choices = [(32, 4), (64, 4)] if dry else [(4096, 8), (8192, 16), (16384, 16), (16384, 32)]
    resident_choices = [16, 32]  # values per thread with 32000 held whole (32 spills on sm_90)
    defaults = [(table, dict(table)) for table in (utils.STREAM_BLOCK, utils.VALUES_PER_THREAD,
                                                   utils.RESIDENT_ROW_LIMIT)]
    for n, k, mode in cases:
        x = torch.randn(n, k, device=device).bfloat16()
        y = torch.randint(0, k, (n,), device=device)
        choices = stream_choices if mode == "stream" else [(None, values) for values in resident_choices]
        for block, value in choices:
            if block is None:
                utils.VALUES_PER_THREAD[4], utils.RESIDENT_ROW_LIMIT[4] = value, 32768
                label = f"resident values/thread={value}"
            else:
                utils.STREAM_BLOCK[4] = (block, value)
                label = f"stream block={block} warps={value}"
            source = x.clone().requires_grad_()
            def step(source=source, y=y):
                fused_cross_entropy_with_grad(source * 1, y, label_smoothing=EPS, inplace_backward=True).backward()
            ms = median_ms(step, device)
            print(f"  N={n} K={k} {label:32s} {ms:8.3f} ms")
            r.add("sweep", label, f"N={n},K={k}", "bf16", "median_ms", ms)
        for table, default in defaults:
            table.update(default)
    r.save()
    return True


# 8. summary -----------------------------------------------------------------------------------------


def step_summary(device: str, dry: bool) -> bool:
    """The steps' status and the headline figures, from $OUT/steps.tsv and $OUT/gpu_acceptance.csv."""
    steps = OUT / "steps.tsv"
    rows = list(csv.DictReader(open(OUT / "gpu_acceptance.csv"))) if (OUT / "gpu_acceptance.csv").exists() else []
    print("\n| step | status | seconds |\n|---|---|---:|")
    for line in steps.read_text().splitlines() if steps.exists() else []:
        name, status, seconds = line.split("\t")
        print(f"| {name} | {status} | {seconds} |")

    def value(name, provider, size, dtype, metric):
        found = [float(r["value"]) for r in rows if (r["name"], r["provider"], r["size"], r["dtype"], r["metric"])
                 == (name, provider, size, dtype, metric)]
        return found[-1] if found else float("nan")

    size = "N=8,K=64" if dry else "N=16384,K=128256"
    print(f"\n| {size} bf16 fwd+bwd | ms | of copy BW | vs fused in place |\n|---|---:|---:|---:|")
    fused = value("fwd+bwd", "labelsmooth-fused-inplace", size, "bf16", "median_ms")
    for provider in ("labelsmooth-fused-inplace", "labelsmooth-fused-inplace-novalidate", "labelsmooth-triton",
                     "liger", "torch", "torch.compile"):
        ms = value("fwd+bwd", provider, size, "bf16", "median_ms")
        print(f"| {provider} | {ms:.3f} | {value('fwd+bwd', provider, size, 'bf16', 'fraction_of_copy'):.1%} | "
              f"{ms / fused:.2f}x |")
    linear = "N=16,D=8,V=70" if dry else "N=16384,D=4096,V=128256"
    print(f"\n| linear {linear} bf16 | ms | extra peak GiB |\n|---|---:|---:|")
    for provider in ("labelsmooth", "liger", "liger-fp32-accumulation", "materialized"):
        print(f"| {provider} | {value('linear fwd+bwd', provider, linear, 'bf16', 'median_ms'):.2f} | "
              f"{value('linear fwd+bwd', provider, linear, 'bf16', 'extra_peak_GiB'):.2f} |")
    print(f"\nfull rows: {OUT / 'gpu_acceptance.csv'}; log: {OUT / 'gpu_acceptance.log'}")
    return True


STEPS = {name.removeprefix("step_"): fn for name, fn in globals().items() if name.startswith("step_")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU through Triton's interpreter")
    args = parser.parse_args(argv)
    device = "cpu" if args.step == "summary" else setup(args.dry_run)
    torch.manual_seed(0)
    return 0 if STEPS[args.step](device, args.dry_run) else 1


if __name__ == "__main__":
    sys.exit(main())
