"""ss2d_core one scan direction at a time: no (batch, 4, dim, L) tensor.

The composition in ``reference/ss2d_core.py`` stacks the four directions in every intermediate
(the cross-scanned copy, the delta projection, the scan output: 3 x 4 x dim x L values, 6.4 GB
each at the half-resolution stage of a 2048x1536 image). Here each direction is projected,
scanned and folded into the output before the next one starts, so the live set is a few
(batch, dim, L) maps: u, its transpose (shared by the two column-major directions), the
direction's sequence, its delta and its scan output, and the two accumulators.

    direction k   sequence                      folded into
    0             u, row-major (a view)          rows
    1             u transposed (one copy)        cols (column-major positions)
    2, 3          0, 1 reversed                  rows, cols, reversed back
    out = rows + cols transposed back, channel-last

x_proj depends on the position, not on the scan order: it runs once, as one matmul on u in
spatial order for all four directions ((batch, 4 (R + 2N), L), reading u once instead of four
times), and each direction takes its rows in its own order (a transpose or flip of R + 2N rows,
not of dim).

The sum runs in the order of cross_merge's torch backend ((0 + 2) + (1 + 3)), in one fixed order:
the forward is deterministic. Any backend's selective_scan can run the scans (K = 1 group each);
autograd goes through the matmuls, flips and that scan's own backward.
"""

from __future__ import annotations

import torch

from .._backend import profiled_range


def _direction_scan(selective_scan, k, seq, dbl, w_dt, A, skip, bias, R, N, f):
    """Direction k's scan output in its own order (batch, dim, L), float32 (float64 for float64
    input), from its sequence and x_proj rows in spatial order for k = 0, 2 (rows) or column-major
    order for k = 1, 3 (cols); the reversed directions flip them here."""
    if k >= 2:
        seq, dbl = seq.flip(-1), dbl.flip(-1)
    delta = torch.matmul(w_dt[k], dbl[:, :R])  # (batch, D, L)
    with profiled_range("selective_scan"):
        y = selective_scan(
            seq.to(f).contiguous(), delta.to(f).contiguous(), A[k],
            dbl[:, None, R : R + N].to(f).contiguous(), dbl[:, None, R + N :].to(f).contiguous(),
            skip[k], bias[k], True,
        )  # fmt: skip
    return y.flip(-1) if k >= 2 else y


def _weights(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds):
    D, N = u.shape[1], A_logs.shape[1]
    f = torch.float64 if u.dtype == torch.float64 else torch.float32
    A = (-torch.exp(A_logs.to(f))).view(4, D, N)
    return f, x_proj_weight.to(u.dtype), dt_projs_weight.to(u.dtype), A, Ds.to(f).view(4, D), dt_projs_bias.to(f)


def direction_output(selective_scan, k, u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds):
    """Direction k alone, back on the map: (batch, dim, H, W), float32 (float64 for float64 u), a
    transposed view for the column-major directions. What the triton backend's backward recomputes
    one direction at a time."""
    batch, D, H, W = u.shape
    R, N = dt_projs_weight.shape[2], A_logs.shape[1]
    f, w_x, w_dt, A, skip, bias = _weights(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)
    seq = (u if k % 2 == 0 else u.transpose(2, 3)).reshape(batch, D, H * W)
    dbl = torch.matmul(w_x[k], seq)  # (batch, R + 2N, L)
    y = _direction_scan(selective_scan, k, seq, dbl, w_dt, A, skip, bias, R, N, f)
    return y.view(batch, D, H, W) if k % 2 == 0 else y.view(batch, D, W, H).transpose(2, 3)


def recomputed_grads(selective_scan, inputs, needs_grad, dout):
    """Gradients of ss2d_core's six inputs (None where not needed) for dout (batch, H, W, dim), one
    direction at a time: recompute it (projections, sequence, delta, the scan and its states) with
    autograd recording, backpropagate, free it. What a backend whose forward saves nothing (the
    fused triton and cpu cores) runs as its backward; the live set is a few (batch, dim, L) maps."""
    leaves = [t.detach().requires_grad_(needs) for t, needs in zip(inputs, needs_grad)]
    dout = dout.permute(0, 3, 1, 2)  # (batch, dim, H, W), as direction_output returns
    with torch.enable_grad():
        for k in range(4):
            y = direction_output(selective_scan, k, *leaves)
            torch.autograd.backward(y, dout.to(y.dtype))
            del y
    return tuple(leaf.grad if needs else None for leaf, needs in zip(leaves, needs_grad))


def register_fused_core(op, scan, extra_args: int = 0, fake: bool = True) -> None:
    """Give a backend's fused ss2d_core custom op (its inputs: ss2d_core's six, then ``extra_args``
    settings without gradients) its fake kernel (unless ``fake`` is False: a triton_op traces
    through its kernels) and the recomputing backward (recomputed_grads) over the selective scan
    that ``scan()`` returns. (The cuda core registers its own: kernels/cuda/ss2d_core.py.)"""
    if fake:

        @op.register_fake
        def _(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, *settings):
            batch, D, H, W = u.shape
            return u.new_empty((batch, H, W, D))

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:6])

    def backward(ctx, dout):
        grads = recomputed_grads(scan(), ctx.saved_tensors, ctx.needs_input_grad[:6], dout)
        return (*grads, *([None] * extra_args))

    op.register_autograd(backward, setup_context=setup_context)


def make_ss2d_core(selective_scan):
    """ss2d_core(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds) over one backend's scan
    (called with the backend signature: u, delta, A, B, C, D, delta_bias, delta_softplus)."""

    def ss2d_core(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds):
        batch, D, H, W = u.shape
        L = H * W
        R, N = dt_projs_weight.shape[2], A_logs.shape[1]
        f, w_x, w_dt, A, skip, bias = _weights(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)
        rows = u.reshape(batch, D, L)  # direction 0's order: a view
        cols = u.transpose(2, 3).reshape(batch, D, L)  # direction 1's order: one copy
        C = R + 2 * N
        dbl_all = torch.matmul(w_x.reshape(4 * C, D), rows).view(batch, 4, C, H, W)  # spatial order
        acc = [None, None]  # rows, cols
        for k in range(4):
            dbl = dbl_all[:, k] if k % 2 == 0 else dbl_all[:, k].transpose(2, 3)
            dbl = dbl.reshape(batch, C, L)  # (batch, R + 2N, L) in direction k's order, unreversed
            y = _direction_scan(selective_scan, k, rows if k % 2 == 0 else cols, dbl, w_dt, A, skip, bias, R, N, f)
            acc[k % 2] = y if acc[k % 2] is None else acc[k % 2] + y
            del y, dbl
        out = acc[0].view(batch, D, H, W) + acc[1].view(batch, D, W, H).transpose(2, 3)
        return out.permute(0, 2, 3, 1).to(u.dtype).contiguous()  # (batch, H, W, D)

    return ss2d_core
