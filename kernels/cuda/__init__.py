"""The `cuda` backend: CUDA C++ kernels (kernels/cuda/csrc) for every op: cross_scan / cross_merge,
the selective scan, window attention and the fused SS2D core, forward and backward.

The extension is the one ``MAMBAIC_BUILD_CUDA=1 pip install -e .`` builds (``mambaic_kernels._cuda``)
or, without it, compiled with nvcc the first time the backend loads on a machine with a GPU
(about a minute; cached by PyTorch in ``$TORCH_EXTENSIONS_DIR``). A call a kernel cannot take
(window attention past 8 x 8 windows or head_dim 32, a scan past 16 states) goes to the next
backend under ``auto``; an explicit ``cuda`` request for it is an error that says why.

Both ops have CUDA backward passes: the selective scan's from the tile states its forward saves,
the SS2D core's a pair of directions at a time (ss2d_core.py: the pair's tile states, from its
forward or, where it saved none, from its scans run again, then one launch of the backward scan for both).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..cuda_build import JIT_NAME, library_header_flags, point_at_toolkit

CSRC = Path(__file__).parent / "csrc"


def supports_device(device: str, dtype: torch.dtype) -> "str | None":
    """Why the CUDA kernels can't take tensors on ``device`` of ``dtype``, or None."""
    if device != "cuda":
        return f"the cuda backend takes CUDA tensors, got {device} tensors"
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"the cuda backend takes float32, float16 and bfloat16, got {dtype}"
    return None


def _build():
    if not torch.cuda.is_available():
        raise ImportError("the cuda backend needs a CUDA GPU, and torch sees none")
    try:
        from .. import _cuda  # built by setup.py with MAMBAIC_BUILD_CUDA=1

        return _cuda
    except ImportError:
        pass
    import logging

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    point_at_toolkit(cpp_extension)
    sources = sorted(str(p) for p in CSRC.glob("*.cpp")) + sorted(str(p) for p in CSRC.glob("*.cu"))
    from .. import _backend

    _backend.announce_build("cuda", JIT_NAME, 90)  # seven sources: about 90 s on the 16-core H100 machine (2026-12-07)
    try:
        return cpp_extension.load(name=JIT_NAME, sources=sources, extra_cflags=["-O3", *library_header_flags()],
                                  extra_cuda_cflags=["-O3", "-lineinfo"], verbose=False)  # fmt: skip
    except Exception as exc:  # the compiler's message is the reason users see
        first = next((line for line in str(exc).splitlines() if "error" in line.lower()), str(exc).splitlines()[0])
        raise ImportError(f"the CUDA kernels failed to compile: {first}") from exc


_ext = _build()

from . import cross_scan, selective_scan, ss2d_core, window_attention  # noqa: E402,F401  (each registers its ops with _backend)
