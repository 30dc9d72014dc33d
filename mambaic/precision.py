"""Precision modes of the model: how the analysis and synthesis transforms (g_a, g_s) compute.

    fp32  float32 weights and activations in PyTorch's default arithmetic, as the official code
          runs (full float32 matmuls; cuDNN may run convolutions in TF32, PyTorch's default): the
          official numbers. The default.
    tf32  float32 weights and activations; matmuls and convolutions on TF32 tensor cores (10-bit
          mantissa products, float32 sums) on GPUs that have them.
    bf16  bfloat16 weights and activations; the scan state, softmax and normalisation statistics
          stay float32 inside the kernels.
    fp16  float16, likewise.

The transforms hold nearly all of the model's arithmetic (full and half resolution); the entropy
model (hyperprior, slice loop, context models, at 1/16 and 1/64 of the image) always runs in
float32 with PyTorch's default arithmetic, so the coder's inputs (means, scales) never pass
through half precision. A file still records its precision, since y (from g_a) and x_hat (from
g_s) depend on it, and decoding with another is refused (mambaic.codec).
"""

from __future__ import annotations

import contextlib
import torch

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(ValueError):
    """A precision that is not one of :data:`PRECISIONS`, or a file decoded in another precision."""


def check(precision: str) -> str:
    if precision not in _DTYPES:
        raise PrecisionError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def dtype_of(precision: str) -> torch.dtype:
    """The dtype of the transforms' weights and activations in ``precision``."""
    return _DTYPES[check(precision)]


def name_of(dtype: torch.dtype, tf32: bool = False) -> str:
    """The precision whose transforms run in ``dtype`` ("fp64" and others by their dtype name)."""
    if dtype == torch.float32:
        return "tf32" if tf32 else "fp32"
    names = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}
    return names.get(dtype, str(dtype).replace("torch.", ""))


def arithmetic(precision: str) -> contextlib.AbstractContextManager:
    """TF32 matmuls and convolutions inside the block for ``tf32``; PyTorch's settings, untouched,
    for every other precision (a null context, which torch.compile traces)."""
    return _TF32() if precision == "tf32" else contextlib.nullcontext()


class _TF32:
    """Allows TF32 in cuBLAS matmuls and cuDNN convolutions; restores the previous settings."""

    def __enter__(self) -> None:
        matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
        self.saved = matmul.allow_tf32, cudnn.allow_tf32
        matmul.allow_tf32 = cudnn.allow_tf32 = True

    def __exit__(self, *exc) -> None:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved
