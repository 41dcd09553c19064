"""Compile every Triton kernel specialization the host code launches for sm_90 and sm_80, no GPU needed.

The host code of ``labelsmooth.ops`` runs on CPU tensors with each kernel launch intercepted (the
kernel is not run: outputs stay unwritten, which the host code does not mind). Each launch's
specialization (dtypes, alignment of pointers and integers, constexprs, warps) is worked out by
Triton's own binder for the target, exactly as a launch on that GPU would, and compiled by
Triton's compiler down to machine code with the ``ptxas`` Triton bundles. The run fails on any
compile error; ``--record`` appends registers, spills and stack per kernel to
``benchmarks/results/kernel_resources.csv`` (metric rows; hardware "ptxas sm_XX", no GPU involved).

    python benchmarks/kernel_resources.py            # compile all, print the table
    python benchmarks/kernel_resources.py --record   # ... and append the CSV rows
    python benchmarks/kernel_resources.py --quick    # a representative subset (the test suite's)

Must run without TRITON_INTERPRET (the kernels have to be real JIT functions); it removes the
variable and re-executes itself when it is set.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    os.environ.pop("TRITON_INTERPRET")
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import labelsmooth as ls  # noqa: E402
from labelsmooth.ops import cross_entropy, linear_cross_entropy_triton  # noqa: E402
from labelsmooth.ops import cross_entropy_kernels as kernels  # noqa: E402

KERNEL_NAMES = ("_statistics_kernel", "_gradient_kernel", "_statistics_and_gradient_kernel", "_scale_rows_kernel")
TARGETS = {"sm_90": GPUTarget("cuda", 90, 32), "sm_80": GPUTarget("cuda", 80, 32)}
# Row widths across the launch heuristic: resident (small, 16-aligned, odd, the 32000 of Llama 2),
# streamed (fp64 past 8k; GPT-2's odd 50257; Llama 3's 128256).
WIDTHS = (10, 4099, 32000, 50257, 128256)
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


class _Capture:
    """Stands in for a kernel: ``kernel[grid](*args, **kwargs)`` records the launch, runs nothing."""

    def __init__(self, kernel, launches):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.kernel, args, kwargs))


def _calls(quick: bool):
    """(description, thunk) pairs that drive the host code through its launch paths."""
    def inputs(n, k, dtype, ignore=True):
        x = torch.randn(n, k).to(dtype)
        y = torch.randint(0, k, (n,))
        if ignore:
            y[0] = -100
        return x, y

    def backward(loss):
        loss.sum().backward()

    widths = (10, 50257) if quick else WIDTHS
    dtypes = (torch.float32, torch.bfloat16, torch.float64) if quick else DTYPES
    option_sets = [dict(label_smoothing=0.1), dict(label_smoothing=0.0),
                   dict(label_smoothing=0.1, softcap=30.0, z_loss=1e-4),
                   dict(label_smoothing=0.1, distribution="prior"), dict(label_smoothing=0.1, weight="weight")]
    if quick:
        option_sets = option_sets[:1] + option_sets[2:4]
    for k in widths:
        for dtype in dtypes:
            for options in option_sets:
                def resolve(options=options, k=k):
                    out = dict(options)
                    if out.get("distribution") == "prior":
                        out["distribution"] = torch.full((k,), 1.0 / k)
                    if out.get("weight") == "weight":
                        out["weight"] = torch.rand(k) + 0.5
                    return out

                x, y = inputs(2, k, dtype)
                yield (f"cross_entropy K={k} {dtype} {options}",
                       lambda x=x, y=y, r=resolve: backward(ls.cross_entropy(
                           x.clone().requires_grad_() * 1, y, impl="triton", **r())))
                yield (f"fused K={k} {dtype} {options}",
                       lambda x=x, y=y, r=resolve: backward(cross_entropy.fused_cross_entropy_with_grad(
                           x.clone().requires_grad_() * 1, y, inplace_backward=True, reduction="none", **r())))
            x, y = inputs(2, k, dtype)
            yield (f"cross_entropy K={k} {dtype} return_parts (arg-max in the statistics pass)",
                   lambda x=x, y=y: backward(ls.cross_entropy(x.clone().requires_grad_() * 1, y, label_smoothing=0.1,
                                                              softcap=30.0, return_parts=True, impl="triton").loss))
            if not quick:
                x, y = inputs(2, k, dtype)
                table = torch.full((k, k), 1.0 / k) if k <= 4099 else None
                if table is not None:
                    yield (f"cross_entropy K={k} {dtype} class-conditional",
                           lambda x=x, y=y, t=table: backward(ls.cross_entropy(
                               x.clone().requires_grad_(), y, label_smoothing=0.1, distribution=t, impl="triton")))
    for dtype in ((torch.bfloat16,) if quick else (torch.float32, torch.bfloat16)):
        h, w = torch.randn(4, 16).to(dtype).requires_grad_(), torch.randn(50257, 16).to(dtype).requires_grad_()
        y = torch.randint(0, 50257, (4,))
        yield (f"linear_cross_entropy {dtype}",
               lambda h=h, w=w, y=y: backward(ls.linear_cross_entropy(h, w, y, label_smoothing=0.1, impl="triton")))


def capture(quick: bool = False) -> list:
    """Unique launches (kernel, args, kwargs) of the host code, kernels not run."""
    launches = []
    for name in KERNEL_NAMES:
        setattr(kernels, name, _Capture(getattr(kernels, name), launches))
    no_check = lambda tensor, name: None  # noqa: E731  (CPU tensors stand in for CUDA ones)
    cross_entropy.check_kernel_device = linear_cross_entropy_triton.check_kernel_device = no_check
    for _description, call in _calls(quick):
        call()
    return launches


def _specialize(kernel, args, kwargs, target):
    """Triton's own binder for ``target``: (signature, constexprs, attrs, options)."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    return kernel._pack_args(backend, kwargs, bound_args, specialization, options)


_REGISTERS = re.compile(r"Used (\d+) registers")
_STACK_AND_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def compile_all(launches, targets=TARGETS) -> list[dict]:
    """Compile each distinct specialization for each target; rows of resources from ptxas."""
    from triton.compiler import ASTSource

    triton.knobs.nvidia.dump_ptxas_log = True  # ptxas -v's report, printed
    triton.knobs.compilation.always_compile = True  # a cached kernel would print no report
    rows, seen = [], set()
    for kernel, args, kwargs in launches:
        for target_name, target in targets.items():
            options, signature, constexprs, attrs = _specialize(kernel, args, kwargs, target)
            key = (kernel.__name__, target_name, repr(sorted(signature.items())), repr(sorted(constexprs.items())),
                   repr(sorted(attrs.items())), options.num_warps)
            if key in seen:
                continue
            seen.add(key)
            log = io.StringIO()
            with contextlib.redirect_stdout(log):
                triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                               options=options.__dict__)
            registers, resources = _REGISTERS.search(log.getvalue()), _STACK_AND_SPILLS.search(log.getvalue())
            if registers is None or resources is None:
                raise RuntimeError(f"no ptxas resource report for {kernel.__name__}:\n{log.getvalue()}")
            regs = int(registers.group(1))
            stack, spill_stores, spill_loads = (int(g) for g in resources.groups())
            named = {kernel.arg_names[k[0]]: v for k, v in constexprs.items() if len(k) == 1}
            specialization = ",".join(f"{n}={getattr(v, 'name', v)}" for n, v in sorted(named.items())
                                      if n.isupper())
            dtype = signature[kernel.arg_names[0]]  # the logits (or gradient) pointer
            rows.append(dict(kernel=kernel.__name__, target=target_name, specialization=specialization,
                             pointer=dtype, num_warps=options.num_warps, registers=regs, stack=stack,
                             spill_stores=spill_stores, spill_loads=spill_loads))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a representative subset of the launches")
    parser.add_argument("--record", action="store_true", help="append rows to benchmarks/results/kernel_resources.csv")
    args = parser.parse_args(argv)
    rows = compile_all(capture(args.quick))
    spilled = [r for r in rows if r["spill_stores"] or r["spill_loads"]]
    print(f"{'kernel':34s} {'target':6s} {'warps':>5s} {'regs':>5s} {'stack':>5s} {'spill st/ld':>11s}  specialization")
    for r in rows:
        print(f"{r['kernel']:34s} {r['target']:6s} {r['num_warps']:5d} {r['registers']:5d} {r['stack']:5d} "
              f"{r['spill_stores']:5d}/{r['spill_loads']:<5d}  {r['pointer']} {r['specialization']}")
    print(f"\n{len(rows)} specializations compiled (triton {triton.__version__}), {len(spilled)} with spills")
    if args.record:
        from _record import Recorder
        recorder = Recorder("kernel_resources")
        for r in rows:
            for metric in ("registers", "stack", "spill_stores", "spill_loads"):
                recorder.add(r["kernel"], f"triton {triton.__version__} ptxas", r["specialization"],
                             r["pointer"], f"{metric} (warps={r['num_warps']})", r[metric])
        recorder.hardware = "no GPU: compiled for " + "/".join(TARGETS)
        for row in recorder.rows:
            row["hardware"] = recorder.hardware
        print(f"rows appended to {recorder.save()}")
    return 1 if spilled else 0


if __name__ == "__main__":
    sys.exit(main())
