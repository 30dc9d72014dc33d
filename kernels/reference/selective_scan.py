"""Reference selective scan (Mamba S6) with VMamba's grouping, one time step at a time.

For channel d of group k = d // (KD / K) and state index n:
  delta_t  = softplus(delta_t + delta_bias)        (each only if given / requested)
  h_t[n]   = exp(delta_t * A[d, n]) * h_{t-1}[n] + delta_t * B[k, n, t] * u_t
  y_t      = sum_n C[k, n, t] * h_t[n] + D[d] * u_t,   h_{-1} = 0
The state and the output are computed in float32 (float64 when u is float64); y takes u's dtype.
"""

import torch
import torch.nn.functional as F


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    out_dtype = u.dtype
    f = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(f) for t in (u, delta, A, B, C))
    batch, KD, L = u.shape
    K = B.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias.to(f)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)  # threshold 20, as mamba's kernels
    B = B.repeat_interleave(KD // K, dim=1)  # (batch, KD, N, L): each channel sees its group's B
    C = C.repeat_interleave(KD // K, dim=1)
    h = u.new_zeros(batch, KD, A.shape[1])  # (batch, KD, N)
    ys = []
    for t in range(L):
        decay = torch.exp(delta[:, :, t, None] * A)  # (batch, KD, N)
        h = decay * h + delta[:, :, t, None] * B[:, :, :, t] * u[:, :, t, None]
        ys.append((h * C[:, :, :, t]).sum(-1))  # (batch, KD)
    y = torch.stack(ys, dim=-1)  # (batch, KD, L)
    if D is not None:
        y = y + u * D.to(f)[:, None]
    return y.to(out_dtype)
