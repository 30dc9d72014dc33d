"""ss2d_core: VMamba's 2D selective scan (SS2D without its projections and norm), as one op."""

from __future__ import annotations

import torch

from . import _backend, _checks


def ss2d_core(
    u: torch.Tensor,
    x_proj_weight: torch.Tensor,
    dt_projs_weight: torch.Tensor,
    dt_projs_bias: torch.Tensor,
    A_logs: torch.Tensor,
    Ds: torch.Tensor,
) -> torch.Tensor:
    """Scan a 2D map in VMamba's four directions and sum them back: the core of SS2D.

    With the four scan orders of :func:`cross_scan` (row-major, column-major, both reversed)
    and, for direction k, R = dt rank and N = d_state::

        xs_k      = u visited in direction k's order                           (batch, dim, L)
        dbl_k     = x_proj_weight[k] @ xs_k = (dts_k | B_k | C_k)              (batch, R + 2N, L)
        delta_k   = dt_projs_weight[k] @ dts_k                                 (batch, dim, L)
        y_k       = selective_scan(xs_k, delta_k, -exp(A_logs_k), B_k, C_k, Ds_k,
                                   delta_bias=dt_projs_bias[k], delta_softplus=True)
        out[p]    = sum_k y_k at the step where direction k visits position p

    The weights are those the official checkpoints store in each SS2D. x_proj depends on the
    position only, not on the scan order, so a backend may compute it once on u in spatial
    order; the scan state and sums are float32.

    Args:
        u: (batch, dim, H, W), the activated depthwise-conv output; float32 / float16 / bfloat16
            (float64 for reference checks); contiguous. Computed in float32 under autocast too.
        x_proj_weight: (4, R + 2N, dim). dt_projs_weight: (4, dim, R). dt_projs_bias: (4, dim).
        A_logs: (4 * dim, N), the log of -A. Ds: (4 * dim,), the skip weight.

    Returns:
        (batch, H, W, dim) in u's dtype (empty for an empty u): the merged scan output, channel-last, before SS2D's
        out_norm. Not always contiguous: a backend whose merge writes channel-first maps returns
        them as a transposed view rather than pay a copy (LayerNorm reads it as it is).

    Example:
        >>> u = torch.randn(2, 8, 5, 7)
        >>> w = dict(x_proj_weight=torch.randn(4, 1 + 2 * 4, 8) / 3, dt_projs_weight=torch.randn(4, 8, 1),
        ...          dt_projs_bias=torch.randn(4, 8), A_logs=torch.zeros(32, 4), Ds=torch.ones(32))
        >>> ss2d_core(u, **w).shape
        torch.Size([2, 5, 7, 8])
    """
    op = "ss2d_core"
    _checks.tensor(op, "u", u, ndim=4)
    batch, dim, H, W = u.shape
    if dim < 1:
        raise ValueError(f"{op}: u must have at least one channel (dim 1), got shape {tuple(u.shape)}")
    _checks.tensor(op, "x_proj_weight", x_proj_weight, ndim=3)
    K, RN2, _ = x_proj_weight.shape
    if K != 4:
        raise ValueError(f"{op}: x_proj_weight must have 4 scan directions in dim 0, got shape {tuple(x_proj_weight.shape)}")
    _checks.shape(op, "x_proj_weight", x_proj_weight, (4, RN2, dim), "(4, R + 2N, dim)")
    _checks.tensor(op, "dt_projs_weight", dt_projs_weight, ndim=3)
    R = dt_projs_weight.shape[2]
    _checks.shape(op, "dt_projs_weight", dt_projs_weight, (4, dim, R), "(4, dim, R)")
    N2 = RN2 - R
    if N2 < 2 or N2 % 2:
        raise ValueError(
            f"{op}: x_proj_weight's R + 2N = {RN2} rows must hold R = {R} (dt_projs_weight's rank) "
            f"plus 2N states for B and C, got {N2} rows for 2N"
        )
    N = N2 // 2
    _checks.tensor(op, "dt_projs_bias", dt_projs_bias)
    _checks.shape(op, "dt_projs_bias", dt_projs_bias, (4, dim), "(4, dim)")
    _checks.tensor(op, "A_logs", A_logs)
    _checks.shape(op, "A_logs", A_logs, (4 * dim, N), "(4 * dim, N)")
    _checks.tensor(op, "Ds", Ds)
    _checks.shape(op, "Ds", Ds, (4 * dim,), "(4 * dim,)")
    weights = dict(x_proj_weight=x_proj_weight, dt_projs_weight=dt_projs_weight, dt_projs_bias=dt_projs_bias,
                   A_logs=A_logs, Ds=Ds)  # fmt: skip
    _checks.same_device(op, "u", u, **weights)
    for name, t in (("u", u), *weights.items()):
        _checks.contiguous(op, name, t)
    fn = _backend.resolve(op, **_checks.meta(u, d_state=N, dt_rank=dt_projs_weight.shape[2]))
    if u.numel() == 0:  # an empty batch or map: nothing to scan, in every backend alike
        return u.new_zeros((batch, H, W, dim))
    # Under autocast the backends' own matmuls (x_proj) would run in half precision, each its own
    # way: the op computes in float32 whatever the autocast, from u as it comes (any dtype).
    with torch.autocast(u.device.type, enabled=False):
        return fn(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)
