"""Shared helpers of the Triton kernels in ``labelsmooth.ops``: block sizes, warps, dtypes, devices.

Importing this module imports ``triton`` and leaves the environment alone. Triton runs kernels on
CPU tensors only through its interpreter, which it switches on when it is first imported with
``TRITON_INTERPRET=1`` in the environment (see :mod:`labelsmooth.ops.cross_entropy`);
:func:`interpreter_active` says whether it did, and :func:`check_kernel_device` turns a CPU
tensor without it into a ``ValueError`` that says how to switch it on.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = [
    "MAX_ROW_BLOCK",
    "check_kernel_device",
    "interpreter_active",
    "row_block_size",
    "row_num_warps",
    "triton_dtype",
]

# Largest block of one row that a program holds at a time (elements). Wider rows loop over
# blocks; 16K elements keep a block in registers at 16 warps (32 fp32 values per thread).
MAX_ROW_BLOCK = 16 * 1024

# torch dtype -> Triton dtype, for constexpr dtype arguments (accumulators, stores).
_TRITON_DTYPES = {
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}


def row_block_size(num_columns: int) -> int:
    """Columns a program reads per step: the next power of two of the row, at most MAX_ROW_BLOCK.

    >>> row_block_size(10), row_block_size(1000), row_block_size(128256)
    (16, 1024, 16384)
    """
    return min(triton.next_power_of_2(max(num_columns, 1)), MAX_ROW_BLOCK)


def row_num_warps(block_size: int) -> int:
    """Warps per program for a row block: about 32 elements per thread, between 4 and 32 warps.

    >>> row_num_warps(16), row_num_warps(4096), row_num_warps(16384)
    (4, 4, 16)
    """
    return max(4, min(32, block_size // 1024))


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


def check_kernel_device(tensor: torch.Tensor, name: str) -> None:
    """Triton kernels need CUDA tensors, or CPU tensors with the interpreter active."""
    if tensor.is_cuda or interpreter_active():
        return
    raise ValueError(f"{name} must be a CUDA tensor for the Triton kernels, got a tensor on "
                     f"{tensor.device}; to run them on CPU through Triton's interpreter (slow), set "
                     f"TRITON_INTERPRET=1 in the environment before importing labelsmooth or triton "
                     f"(e.g. TRITON_INTERPRET=1 python script.py)")
