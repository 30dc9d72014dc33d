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

from ..pytorch.ss2d_core import register_fused_core  # noqa: E402

selective_scan = make_selective_scan(_ext)
cross_scan, cross_merge = make_cross_ops(_ext)


def _ss2d_core_fused(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds):
    """The forward, one C++ scan per direction into two float32 accumulators (the layout of the
    triton backend's fused core, kernels/triton/ss2d_core.py): the column-major pair (k = 1, 3)
    on u's transposed copy, then the row-major pair on u; the reversed directions read their
    sequence backwards in place; delta computed in the scan from the x_proj output's R rows. At
    most three (batch, dim, L) maps live besides u, against the stacked composition's twelve."""
    f = torch.float32
    batch, D, H, W = u.shape
    L = H * W
    R, N = dt_projs_weight.shape[2], A_logs.shape[1]
    C = R + 2 * N
    A = (-torch.exp(A_logs.to(f))).view(4, D, N)
    skip, bias = Ds.to(f).view(4, D), dt_projs_bias.to(f).contiguous()
    w_x, w_dt = x_proj_weight.to(f), dt_projs_weight.to(f).contiguous()
    u = u.to(f)
    acc = {}
    for first in (1, 0):
        seq = (u.transpose(2, 3) if first == 1 else u).reshape(batch, D, L).contiguous()
        dbl = torch.matmul(w_x[first::2].reshape(2 * C, D), seq)  # (batch, 2 (R + 2N), L) in seq's order
        acc[first] = u.new_empty((batch, D, L))
        for k in (first, first + 2):
            rows = dbl[:, (k // 2) * C : (k // 2 + 1) * C]
            _ext.ss2d_direction_fwd(seq, rows[:, :R], w_dt[k], A[k].contiguous(), rows[:, R : R + N],
                                    rows[:, R + N :], skip[k].contiguous(), bias[k].contiguous(), acc[first],
                                    k >= 2, k >= 2)  # fmt: skip
        del seq, dbl
    out = u.new_empty((batch, H, W, D))
    # rows + cols transposed back, written channel-last (the layout out_norm reads)
    torch.add(acc[0].view(batch, D, H, W).permute(0, 2, 3, 1), acc[1].view(batch, D, W, H).permute(0, 3, 2, 1),
              out=out)  # fmt: skip
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
    # the C++ cross-scan, scan and cross-merge that this backend ran before mambaic 0.3).
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
