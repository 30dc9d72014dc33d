"""`cuda` backend of ss2d_core: the four directions in one launch of the CUDA scan, no (batch, 4,
dim, L) tensor and no delta in memory.

    rows   u itself (batch, dim, L), directions 0 and 2 (2 walks it backwards)
    cols   u transposed by a tiled CUDA transpose, directions 1 and 3
    dbl    = x_proj_weight[k, k + 2] @ rows (resp. cols): (batch, 2 (R + 2N), L), in that order
    scan   one launch, 4 dim channels: each block stages its direction's B, C and R delta-rank rows
           for a tile of steps and computes delta = dt_projs_weight[k] @ (the R rows) + bias in
           registers; k and k + 2 add their y into one zeroed accumulator (rows or cols) with
           float atomics. Every element receives exactly two additions onto zero, and x + y == y + x
           in IEEE arithmetic, so the sum does not depend on their order: the forward is
           bit-identical from run to run.
    merge  rows acc += cols acc transposed back (tiled), then transposed channel-last: the output.

Live (batch, dim, L) float32 maps besides u: cols and the two accumulators (plus both dbl, 2 (R +
2N) / dim of a map each), then the rows accumulator and the output. The backward recomputes one
direction at a time over the cuda selective scan, forward with tile states then backward
(kernels/pytorch/ss2d_core.py: recomputed_grads).
"""

from __future__ import annotations

import torch

from .. import _backend
from ..pytorch.ss2d_core import register_fused_core
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
    cols = u.new_empty((batch, D, W, H))
    _ext.transpose(u.view(batch * D, H, W), cols.view(batch * D, W, H), False)
    seqs = (u.view(batch, D, L), cols.view(batch, D, L))
    # x_proj of directions (0, 2) on rows and (1, 3) on cols: each in its sequence's order
    projs = [torch.matmul(w_x[first::2].reshape(2 * C, D), seqs[first]) for first in (0, 1)]
    acc = [torch.zeros((batch, D, L), dtype=f, device=u.device) for _ in range(2)]
    _ext.ss2d_fwd(*seqs, *projs, w_dt.contiguous(), A.contiguous(), skip.contiguous(), bias.contiguous(), *acc)
    del cols, seqs, projs
    _ext.transpose(acc[1].view(batch * D, W, H), acc[0].view(batch * D, H, W), True)
    del acc[1]
    out = u.new_empty((batch, L, D))
    _ext.transpose(acc[0], out, False)
    return out.view(batch, H, W, D).to(dtype)


register_fused_core(ss2d_core_fwd_cuda, lambda: _scan.selective_scan)


def ss2d_core(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds):
    """The backend entry point registered with _backend (arguments already checked)."""
    return torch.ops.mambaic.ss2d_core_fwd_cuda(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)


_MAX_RANK = 64  # delta-rank rows staged per tile in shared memory (csrc/selective_scan.h: kMaxRank)


def supports(device: str, dtype: torch.dtype, d_state: int, dt_rank: int = 0, **_) -> str | None:
    if dt_rank > _MAX_RANK:
        return f"the cuda ss2d_core stages at most {_MAX_RANK} delta-rank rows per tile, got dt_rank={dt_rank}"
    return _scan.supports(device, dtype, d_state)


_backend.register("ss2d_core", "cuda", ss2d_core, supports)
