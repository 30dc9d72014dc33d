"""The `cpu` backend: C++ kernels for CPU tensors, compiled on first use.

The selective scan is the op that plain PyTorch can't make fast on a CPU (one memory pass per
step of a recurrence); cross-scan / cross-merge are a single C++ pass per plane instead of
PyTorch's chain of views, flips and transposes. Window attention uses the `torch` implementation
(SDPA is already a fused CPU kernel). The extension is compiled with the machine's C++
compiler the first time the backend loads (about a minute; cached by PyTorch in
``$TORCH_EXTENSIONS_DIR``), for that machine's vector instructions (-march=native). A missing
compiler makes the backend unavailable, with the compiler's error as the reason.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import _backend
from ..pytorch import window_attention


def _build():
    import logging

    # cpp_extension warns at import that no CUDA runtime exists on CPU machines: true, and irrelevant
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    csrc = Path(__file__).parent / "csrc"
    try:
        return cpp_extension.load(
            name="mambaic_cpu_selective_scan",
            sources=[str(csrc / "selective_scan.cpp"), str(csrc / "cross_scan.cpp")],
            extra_cflags=["-O3", "-march=native", "-ffast-math", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as exc:  # the compiler's message is the reason users see
        first = next((line for line in str(exc).splitlines() if "error" in line.lower()), str(exc).splitlines()[0])
        raise ImportError(f"the C++ CPU kernels failed to compile: {first}") from exc


_ext = _build()

from .cross_scan import make_cross_ops  # noqa: E402
from .selective_scan import make_selective_scan  # noqa: E402

from ..reference.ss2d_core import compose  # noqa: E402

selective_scan = make_selective_scan(_ext)
cross_scan, cross_merge = make_cross_ops(_ext)


def ss2d_core(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds):
    # The stacked composition over the C++ kernels: one direction at a time (the torch backend's
    # form) took 36% less memory but 10% more time at 768x512 on 2 cores (59.9 against 54.4 s,
    # 2026-11-29, bench/RESULTS.md): its flips and transposes are extra passes that the single
    # C++ cross-scan / cross-merge pass avoids. The CPU keeps the faster form.
    return compose(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, cross_scan=cross_scan,
                   selective_scan=selective_scan, cross_merge=cross_merge)  # fmt: skip


def _supports(device, dtype, **meta):
    if device != "cpu":
        return f"the cpu backend takes CPU tensors, got {device} tensors"
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"the cpu backend takes float32, float16 and bfloat16, got {dtype}"
    return None


for _op, _fn in (("cross_scan", cross_scan), ("cross_merge", cross_merge), ("selective_scan", selective_scan),
                 ("window_attention", window_attention), ("ss2d_core", ss2d_core)):
    _backend.register(_op, "cpu", _fn, _supports)
