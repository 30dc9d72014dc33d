"""The optional `vmamba` backend: VMamba's own CUDA selective scan, as a baseline to compare with.

It runs what users of the official MambaIC code run today: VMamba's ``selective_scan_cuda_core``
extension (built by users from VMamba's ``kernels/selective_scan`` with ``MODES = ["core"]``) for
the scan, PyTorch views for cross-scan / cross-merge (the official ``CrossScan`` is the same), and
the einsum + mask + softmax formulation of the official WMSA for window attention (our reference).
It is never a dependency, never picked by ``auto``, and exists for ``bench/latency.py``.
"""

import torch

from . import _backend
from .pytorch import cross_merge, cross_scan
from .reference import window_attention
from .reference.ss2d_core import compose

try:
    import selective_scan_cuda_core as _core
except ImportError as exc:
    raise ImportError(
        f"VMamba's selective_scan_cuda_core is not importable ({exc}); build it from VMamba's "
        f"kernels/selective_scan with MODES = ['core'] in its setup.py"
    ) from exc


class _VMambaSelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus):
        out, x, *_ = _core.fwd(u, delta, A, B, C, D, delta_bias, delta_softplus, 1)
        ctx.delta_softplus = delta_softplus
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, x)
        return out

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, delta_bias, x = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, ddelta_bias, *_ = _core.bwd(
            u, delta, A, B, C, D, delta_bias, dout.contiguous(), x, ctx.delta_softplus, 1
        )
        return du, ddelta, dA, dB, dC, (dD if D is not None else None), (ddelta_bias if delta_bias is not None else None), None


def selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus):
    # VMamba's core kernel wants float32 A, D and delta_bias, as the official SS2D passes them
    return _VMambaSelectiveScan.apply(
        u, delta, A.float(), B, C, None if D is None else D.float(),
        None if delta_bias is None else delta_bias.float(), delta_softplus,
    )


def _supports(device, dtype, **meta):
    if device != "cuda":
        return f"the vmamba backend needs CUDA tensors, got {device} tensors"
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"the vmamba backend takes float32, float16 and bfloat16, got {dtype}"
    return None


def ss2d_core(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds):
    # what the official SS2D runs: the four directions stacked, VMamba's scan between our
    # PyTorch cross-scan and cross-merge
    return compose(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, cross_scan=cross_scan,
                   selective_scan=selective_scan, cross_merge=cross_merge)  # fmt: skip


for _op, _fn in (("cross_scan", cross_scan), ("cross_merge", cross_merge), ("selective_scan", selective_scan),
                 ("window_attention", window_attention), ("ss2d_core", ss2d_core)):
    _backend.register(_op, "vmamba", _fn, _supports)
