"""Shared helpers of the Triton kernels in ``labelsmooth.ops``: launch sizes, dtypes, devices.

Importing this module imports ``triton`` and leaves the environment alone. Triton runs kernels on
CPU tensors only through its interpreter, which it switches on when it is first imported with
``TRITON_INTERPRET=1`` in the environment (see :mod:`labelsmooth.ops.cross_entropy`);
:func:`interpreter_active` says whether it did, and :func:`check_kernel_device` turns a CPU
tensor without it into a ``ValueError`` that says how to switch it on.

Launch sizes come from one heuristic, :func:`row_launch`: a row of up to
``RESIDENT_ROW_LIMIT[accumulation bytes]`` classes is held in registers whole (read once, the
gradient written from registers); a wider row is streamed in blocks of ``STREAM_BLOCK``. The
tables are module constants so that a GPU sweep (``benchmarks/gpu_acceptance.py``) can try
other values without editing code; the defaults keep every kernel free of register spills when
compiled for sm_80 and sm_90 (``benchmarks/kernel_resources.py`` records the counts).
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import triton
import triton.language as tl

__all__ = [
    "RESIDENT_ROW_LIMIT",
    "STREAM_BLOCK",
    "RowLaunch",
    "check_kernel_device",
    "device_guard",
    "interpreter_active",
    "row_launch",
    "triton_dtype",
]

# Widest row (classes) held in registers whole, by the byte size of the accumulation dtype: fp32
# statistics take one register per value, fp64 two. 16 fp32 values per thread (16384 over 32
# warps) leave room for the smoothing row, softcap and temporaries: at 32 per thread ptxas spills
# (sm_80 and sm_90 both cap a 32-warp program at 64 registers a thread).
RESIDENT_ROW_LIMIT = {4: 16 * 1024, 8: 4 * 1024}
# (block, warps) for rows streamed in blocks, by accumulation bytes: 16 (fp64: 8) values per thread.
STREAM_BLOCK = {4: (4 * 1024, 8), 8: (2 * 1024, 8)}
# Values per thread for resident rows: warps = block / (32 threads * this), clamped to [4, 32].
VALUES_PER_THREAD = {4: 16, 8: 8}

# torch dtype -> Triton dtype, for constexpr dtype arguments (accumulators, stores).
_TRITON_DTYPES = {
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}


class RowLaunch(NamedTuple):
    """How a row kernel walks a row: ``block`` columns at a time over ``num_warps`` warps;
    ``resident`` when the whole row fits in one block (read once, kept in registers)."""

    block: int
    num_warps: int
    resident: bool


def row_launch(num_columns: int, accumulation: torch.dtype) -> RowLaunch:
    """Block, warps and mode of the row kernels for rows of ``num_columns`` classes.

    >>> row_launch(10, torch.float32), row_launch(16000, torch.float32)
    (RowLaunch(block=16, num_warps=4, resident=True), RowLaunch(block=16384, num_warps=32, resident=True))
    >>> row_launch(128256, torch.float32), row_launch(10000, torch.float64)
    (RowLaunch(block=4096, num_warps=8, resident=False), RowLaunch(block=2048, num_warps=8, resident=False))
    """
    size = 8 if accumulation == torch.float64 else 4
    if num_columns <= RESIDENT_ROW_LIMIT[size]:
        block = triton.next_power_of_2(max(num_columns, 1))
        return RowLaunch(block, max(4, min(32, block // (32 * VALUES_PER_THREAD[size]))), True)
    block, num_warps = STREAM_BLOCK[size]
    return RowLaunch(block, num_warps, False)


def triton_dtype(dtype: torch.dtype):
    """The Triton dtype of a floating torch dtype.

    >>> triton_dtype(torch.bfloat16)
    triton.language.bfloat16
    """
    if dtype not in _TRITON_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(map(str, _TRITON_DTYPES))}, got {dtype}")
    return _TRITON_DTYPES[dtype]


def interpreter_active() -> bool:
    """True when Triton runs kernels through its interpreter (TRITON_INTERPRET=1 at import)."""
    return not isinstance(tl.sum, triton.JITFunction)


# Device type -> context manager that makes a device current for a launch. Triton launches on the
# *current* CUDA device, so logits on cuda:1 while cuda:0 is current (a model split over GPUs)
# need cuda:1 made current first. Other device types (the interpreter's CPU) need nothing.
DEVICE_GUARDS = {"cuda": torch.cuda.device}


def device_guard(tensor: torch.Tensor):
    """The context every kernel launch runs in: ``tensor``'s device made current.

    >>> with device_guard(torch.zeros(1)):  # a CPU tensor: nothing to switch
    ...     pass
    """
    guard = DEVICE_GUARDS.get(tensor.device.type)
    return guard(tensor.device) if guard is not None else contextlib.nullcontext()


def check_kernel_device(tensor: torch.Tensor, name: str) -> None:
    """Triton kernels need CUDA tensors, or CPU tensors with the interpreter active."""
    if tensor.is_cuda or interpreter_active():
        return
    raise ValueError(f"{name} must be a CUDA tensor for the Triton kernels, got a tensor on "
                     f"{tensor.device}; to run them on CPU through Triton's interpreter (slow), set "
                     f"TRITON_INTERPRET=1 in the environment before importing labelsmooth or triton "
                     f"(e.g. TRITON_INTERPRET=1 python script.py)")
