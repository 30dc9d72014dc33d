"""`cuda` backend of ss2d_core: the four directions in two launches of the CUDA scan, no
(batch, 4, dim, L) tensor.

    column-major pair first (k = 1, 3), then the row-major pair (k = 0, 2); per pair:
        seq    cols = u transposed (a tiled CUDA transpose), or u itself
        dbl    = x_proj_weight[k, k + 2] @ seq   (batch, 2 (R + 2N), L), in seq's order
        delta  = dt_projs_weight[k] @ its R rows, one (batch, dim, L) buffer per direction of the pair
        acc    zeroed; one launch runs both directions (k forwards, k + 2 backwards over the same
               seq, blocks of each side by side: 2 dim channels, twice the blocks of one direction)
               and each adds its y into acc with float atomics. Every element receives exactly
               two additions onto zero, and x + y == y + x in IEEE arithmetic, so the sum does not
               depend on their order: the forward is bit-identical from run to run.
    rows acc += cols acc transposed back (tiled), then transposed channel-last into the output.

Live (batch, dim, L) float32 maps besides u: cols, two deltas and the cols accumulator, then two
deltas and both accumulators, then the rows accumulator and the output. The backward recomputes
one direction at a time over the triton scan (kernels/pytorch/ss2d_core.py: recomputed_grads).
"""

from __future__ import annotations

import torch

from .. import _backend
from ..pytorch.ss2d_core import recomputed_grads
from . import _ext
from . import selective_scan as _scan


@torch.library.custom_op("mambaic::ss2d_core_fwd_cuda", mutates_args=())
def ss2d_core_fwd_cuda(
    u: torch.Tensor, x_proj_weight: torch.Tensor, dt_projs_weight: torch.Tensor, dt_projs_bias: torch.Tensor,
    A_logs: torch.Tensor, Ds: torch.Tensor,
) -> torch.Tensor:
    """(batch, H, W, dim) in u's dtype, computed in float32."""
    f, dtype = torch.float32, u.dtype
    batch, D, H, W = u.shape
    L = H * W
    R, N = dt_projs_weight.shape[2], A_logs.shape[1]
    C = R + 2 * N
    A = (-torch.exp(A_logs.to(f))).view(4, D, N)
    skip, bias = Ds.to(f).view(4, D), dt_projs_bias.to(f).reshape(4, D)
    w_x, w_dt = x_proj_weight.to(f), dt_projs_weight.to(f)
    u = u.to(f).contiguous()
    deltas = [u.new_empty((batch, D, L)) for _ in range(2)]
    acc = {}
    for first in (1, 0):
        if first == 1:
            seq = u.new_empty((batch, D, W, H))
            _ext.transpose(u.view(batch * D, H, W), seq.view(batch * D, W, H), False)
            seq = seq.view(batch, D, L)
        else:
            seq = u.view(batch, D, L)
        dbl = torch.matmul(w_x[first::2].reshape(2 * C, D), seq)  # (batch, 2C, L) in seq's order
        sides = [dbl[:, j * C : (j + 1) * C] for j in range(2)]  # direction first, then first + 2
        for j in range(2):
            torch.matmul(w_dt[first + 2 * j], sides[j][:, :R], out=deltas[j])
        acc[first] = torch.zeros((batch, D, L), dtype=f, device=u.device)
        ks = (first, first + 2)
        _ext.ss2d_pair_fwd(seq, deltas, [A[k] for k in ks], [s[:, R : R + N] for s in sides],
                           [s[:, R + N :] for s in sides], [skip[k] for k in ks], [bias[k] for k in ks], acc[first])  # fmt: skip
        del seq, dbl, sides
    del deltas
    _ext.transpose(acc[1].view(batch * D, W, H), acc[0].view(batch * D, H, W), True)
    del acc[1]
    out = u.new_empty((batch, L, D))
    _ext.transpose(acc[0], out, False)
    return out.view(batch, H, W, D).to(dtype)


@ss2d_core_fwd_cuda.register_fake
def _(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds):
    batch, D, H, W = u.shape
    return u.new_empty((batch, H, W, D))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, dout):
    from ..triton import selective_scan as triton_scan

    return recomputed_grads(triton_scan.selective_scan, ctx.saved_tensors, ctx.needs_input_grad, dout)


torch.library.register_autograd("mambaic::ss2d_core_fwd_cuda", _backward, setup_context=_setup_context)


def ss2d_core(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds):
    """The backend entry point registered with _backend (arguments already checked)."""
    return torch.ops.mambaic.ss2d_core_fwd_cuda(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)


_backend.register("ss2d_core", "cuda", ss2d_core, _scan.supports)
