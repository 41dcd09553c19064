"""Shared helpers of the Triton kernels in ``labelsmooth.ops``: block sizes, warps, dtypes, devices.

Importing this module on a machine without CUDA switches Triton's interpreter on
(``TRITON_INTERPRET=1``, unless the variable is already set) before ``triton`` is imported:
there, the interpreter is the only way a Triton kernel runs at all, and it runs them on CPU
tensors (slowly; this is how the kernels are tested without a GPU). Triton reads the variable
when it is first imported, so a process that imported ``triton`` earlier without it keeps
compiled kernels, and :func:`check_kernel_device` then says so instead of failing obscurely.
"""

from __future__ import annotations

import os
import sys

import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402  (after the interpreter switch above)
import triton.language as tl  # noqa: E402

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
                     f"{tensor.device}; on CPU they run through Triton's interpreter, which needs "
                     f"TRITON_INTERPRET=1 set before triton is first imported")
