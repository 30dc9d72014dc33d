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
    _backend.announce_build("cpu", "mambaic_cpu_selective_scan", 60)
    try:
        return cpp_extension.load(
            name="mambaic_cpu_selective_scan",
            sources=[str(csrc / "selective_scan.cpp"), str(csrc / "cross_scan.cpp"), str(csrc / "ss2d_core.cpp")],
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

from ..pytorch.ss2d_core import register_fused_core  # noqa: E402

selective_scan = make_selective_scan(_ext)
cross_scan, cross_merge = make_cross_ops(_ext)


def _ss2d_core_fused(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds):
    """The forward: for each direction, its x_proj output (batch, L, R + 2N), one row per step
    (a matmul on u's positions), then its C++ scan (csrc/ss2d_core.cpp), which reads u at the
    step's position and adds into the channel-last output. Besides u and the output, no map of
    u's size exists (the accumulator form of mambaic 0.3 kept three)."""
    f = torch.float32
    batch, D, H, W = u.shape
    L = H * W
    C = x_proj_weight.shape[1]
    A = (-torch.exp(A_logs.to(f))).view(4, D, -1)
    skip, bias = Ds.to(f).view(4, D), dt_projs_bias.to(f)
    w_x, w_dt = x_proj_weight.to(f), dt_projs_weight.to(f)
    u = u.to(f).contiguous()
    positions = u.view(batch, D, L).transpose(1, 2)  # (batch, L, D), a view
    out = u.new_empty((batch, H, W, D))
    for k in range(4):
        proj = torch.matmul(positions, w_x[k].t())  # (batch, L, R + 2N), one row per position
        if k % 2:  # the column directions read their rows in column-major order
            proj = proj.view(batch, H, W, C).transpose(1, 2).contiguous()
        _ext.ss2d_direction_cl(u, proj.view(batch, L, C), w_dt[k].contiguous(), A[k].contiguous(),
                               skip[k].contiguous(), bias[k].contiguous(), out, k % 2 == 1, k >= 2, k > 0)
        del proj
    return out


@torch.library.custom_op("mambaic::ss2d_core_fwd_cpu", mutates_args=())
def ss2d_core_fwd_cpu(
    u: torch.Tensor, x_proj_weight: torch.Tensor, dt_projs_weight: torch.Tensor, dt_projs_bias: torch.Tensor,
    A_logs: torch.Tensor, Ds: torch.Tensor,
) -> torch.Tensor:
    """(batch, H, W, dim) in u's dtype; a custom op, so that torch.compile keeps it as one node."""
    return _ss2d_core_fused(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds).to(u.dtype)


register_fused_core(ss2d_core_fwd_cpu, lambda: selective_scan)


def ss2d_core(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds):
    # Fused over the C++ scan (bench/RESULTS.md: faster and leaner than the stacked composition of
    # the C++ cross-scan, scan and cross-merge that this backend ran before mambaic 0.3, and than
    # its accumulator form of 0.3).
    return ss2d_core_fwd_cpu(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)


def _supports(device, dtype, **meta):
    if device != "cpu":
        return f"the cpu backend takes CPU tensors, got {device} tensors"
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"the cpu backend takes float32, float16 and bfloat16, got {dtype}"
    return None


for _op, _fn in (("cross_scan", cross_scan), ("cross_merge", cross_merge), ("selective_scan", selective_scan),
                 ("window_attention", window_attention), ("ss2d_core", ss2d_core)):
    _backend.register(_op, "cpu", _fn, _supports)
