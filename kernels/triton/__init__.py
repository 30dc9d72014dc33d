"""The `triton` backend: Triton kernels, forward and backward, one module per op.

Importing this package registers every op's Triton implementation; a missing Triton makes the
whole backend unavailable, and the ImportError is the reason users see.
"""

import os

import torch
import triton  # noqa: F401  (an ImportError here makes the backend unavailable, with this reason)


def supports_device(device: str, dtype: torch.dtype) -> "str | None":
    """Why the Triton kernels can't take tensors on ``device`` of ``dtype``, or None."""
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if device != "cuda" and not (device == "cpu" and interpret):
        return f"the triton backend needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got {device} tensors"
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"the triton backend takes float32, float16 and bfloat16, got {dtype}"
    return None


# Each module calls _backend.register(op, "triton", fn, supports) at import.
from . import cross_scan, selective_scan, ss2d_core, window_attention  # noqa: E402,F401
