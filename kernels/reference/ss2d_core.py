"""Reference ss2d_core: today's SS2D core as the composition of the reference ops.

cross-scan the map into four sequences, project each (x_proj, then dt_proj), run the selective
scan over the four stacked directions, and cross-merge the four outputs back onto the map. Every
intermediate holds all four directions: (batch, 4, dim, L) each; obvious, not frugal.
"""

import torch

from .._backend import profiled_range
from .cross_scan import cross_merge, cross_scan
from .selective_scan import selective_scan


def compose(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, *, cross_scan, selective_scan, cross_merge):
    """The composition over the given ops (the reference's, or a backend's), called positionally with
    the backend signatures: cross_scan(x, channel_last), selective_scan(u, delta, A, B, C, D,
    delta_bias, delta_softplus), cross_merge(y, channel_last)."""
    batch, D, H, W = u.shape
    K, L = 4, H * W
    R, N = dt_projs_weight.shape[2], A_logs.shape[1]
    f = torch.float64 if u.dtype == torch.float64 else torch.float32
    xs = cross_scan(u.contiguous(), False)  # (batch, K, D, L)
    x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, x_proj_weight.to(xs.dtype))  # (batch, K, R + 2N, L)
    dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=2)
    dts = torch.einsum("bkrl,kdr->bkdl", dts, dt_projs_weight.to(dts.dtype))  # (batch, K, D, L)
    with profiled_range("selective_scan"):
        ys = _scan(selective_scan, xs, dts, Bs, Cs, A_logs, Ds, dt_projs_bias, f)  # (batch, K * D, L)
    y = cross_merge(ys.contiguous().view(batch, K, D, H, W), True)  # (batch, L, D)
    return y.to(u.dtype).view(batch, H, W, D)


def _scan(selective_scan, xs, dts, Bs, Cs, A_logs, Ds, dt_projs_bias, f):
    batch, K, D, L = xs.shape
    return selective_scan(
        xs.reshape(batch, K * D, L).to(f),
        dts.reshape(batch, K * D, L).to(f).contiguous(),
        -torch.exp(A_logs.to(f)),
        Bs.to(f).contiguous(),
        Cs.to(f).contiguous(),
        Ds.to(f),
        dt_projs_bias.reshape(-1).to(f),
        True,
    )


def ss2d_core(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds):
    """(batch, D, H, W) -> (batch, H, W, D); computed in float32 (float64 for float64 u)."""
    return compose(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds,
                   cross_scan=cross_scan, selective_scan=selective_scan, cross_merge=cross_merge)  # fmt: skip
