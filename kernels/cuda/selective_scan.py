"""`cuda` backend of selective_scan: the forward kernel of csrc/selective_scan_fwd.cu.

The op ``mambaic::selective_scan_fwd_cuda`` computes in float32 (other dtypes are cast on the way
in and y cast back, as every backend does). Its backward recomputes the forward with the triton
kernels, which keep the tile states their backward needs, and runs the triton backward: the
gradients are the triton backend's, to its tolerances.
"""

from __future__ import annotations

import torch

from .. import _backend
from . import _ext

_MAX_N = 16  # the kernel pads N up to 16 states in registers


@torch.library.custom_op("mambaic::selective_scan_fwd_cuda", mutates_args=())
def selective_scan_fwd_cuda(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, delta_bias: torch.Tensor | None, delta_softplus: bool,
) -> torch.Tensor:
    """y (batch, KD, L) in u's dtype, computed in float32."""
    f = torch.float32
    opt = [None if t is None else t.to(f).contiguous() for t in (D, delta_bias)]
    y = _ext.selective_scan_fwd(*(t.to(f).contiguous() for t in (u, delta, A, B, C)), *opt, delta_softplus)
    return y.to(u.dtype)


@selective_scan_fwd_cuda.register_fake
def _(u, delta, A, B, C, D, delta_bias, delta_softplus):
    return torch.empty_like(u)


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, delta_bias, delta_softplus = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, delta_bias)
    ctx.delta_softplus = delta_softplus


def _backward(ctx, dy):
    from ..triton import selective_scan as tr

    u, delta, A, B, C, D, delta_bias = ctx.saved_tensors
    A32 = A.float().contiguous()
    D32 = None if D is None else D.float().contiguous()
    bias32 = None if delta_bias is None else delta_bias.float().contiguous()
    batch, KD, L = u.shape
    n_chunks, _ = tr._chunking(batch, KD, L, tr._FWD_TILES, u.device, tr._FWD_PROGRAMS_PER_SM)
    _, states = torch.ops.mambaic.selective_scan_fwd_triton(u, delta, A32, B, C, D32, bias32, ctx.delta_softplus,
                                                            True, n_chunks)  # fmt: skip
    bwd_chunks = tr._chunking(batch, KD, L, tr._BWD_TILES, u.device, tr._BWD_PROGRAMS_PER_SM)[0]
    du, ddelta, dA, dB, dC, dD, dbias = torch.ops.mambaic.selective_scan_bwd_triton(
        dy, u, delta, A32, B, C, D32, bias32, ctx.delta_softplus, states, bwd_chunks)
    return (du, ddelta, dA.to(A.dtype), dB, dC, None if D is None else dD.to(D.dtype),
            None if delta_bias is None else dbias.to(delta_bias.dtype), None)


torch.library.register_autograd("mambaic::selective_scan_fwd_cuda", _backward, setup_context=_setup_context)


def selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus):
    """The backend entry point registered with _backend (arguments already checked)."""
    return torch.ops.mambaic.selective_scan_fwd_cuda(u, delta, A, B, C, D, delta_bias, bool(delta_softplus))


def supports(device: str, dtype: torch.dtype, d_state: int, **_) -> str | None:
    if device != "cuda":
        return f"the cuda backend takes CUDA tensors, got {device} tensors"
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"the cuda backend takes float32, float16 and bfloat16, got {dtype}"
    if d_state > _MAX_N:
        return f"the cuda selective scan keeps at most {_MAX_N} states per channel, got d_state={d_state}"
    return None


_backend.register("selective_scan", "cuda", selective_scan, supports)
