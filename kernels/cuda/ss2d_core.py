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
2N) / dim of a map each), then the rows accumulator and the output.

With ``save_states`` the scan also writes the state entering every tile of 512 steps of each
direction, (2 pairs, 2, batch, dim, tiles, N): 1/32 of a map per direction, what the backward needs
besides the inputs. They are saved whenever a gradient may be asked for (SAVE_TILE_STATES): in a training step (H100,
twelfth session) that took the GPU time from 591 to 578 ms and the peak from 15,022 to 15,310 MiB.

The backward (mambaic::ss2d_core_bwd_cuda) runs one pair of directions at a time, cols (1, 3)
then rows (0, 2), with no flip and no copy of B or C:

    proj    x_proj of the pair on its sequence, as the forward; delta = dt_projs_weight[k] @ its
            R rows, both directions (2, batch, dim, L)
    states  the forward's tile states of the pair or, when it saved none, the pair's scans again
            with delta read from memory, keeping the state entering every tile
    scan    one launch of the backward scan for both directions, k + 2 walking backwards: du of
            both added into one zeroed map (two additions onto zero: deterministic), ddelta per
            direction, dB and dC straight into the B and C rows of dproj (atomics)
    rest    matmuls: dproj's R rows, dt_projs_weight, x_proj_weight and the sequence's share of
            du; cols' du transposed back onto the map

It holds about ten maps of the images it works on, so it takes the batch in groups of whole images
of at most 2^29 elements (one group below that: every training and 2K batch).
"""

from __future__ import annotations

import torch

from .. import _backend
from . import _ext
from . import selective_scan as _scan


def _weights32(x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds):
    """The SS2D weights as the kernels take them, float32: x_proj (4, R + 2N, D), dt_proj (4, D, R),
    A = -exp(A_logs) (4, D, N), skip D and delta bias (4, D); with R and N."""
    f = torch.float32
    D, R, N = dt_projs_weight.shape[1], dt_projs_weight.shape[2], A_logs.shape[1]
    A = (-torch.exp(A_logs.to(f))).view(4, D, N)
    skip, bias = Ds.to(f).view(4, D), dt_projs_bias.to(f).reshape(4, D)
    return x_proj_weight.to(f), dt_projs_weight.to(f), A, skip, bias, R, N


def _states_shape(u: torch.Tensor, N: int) -> tuple[int, ...]:
    """The forward's tile states: [first][i] holds direction first + 2 i, the pair ss2d_pair_bwd takes."""
    batch, D, H, W = u.shape
    return (2, 2, batch, D, -(-(H * W) // _scan.TILE), N)


@torch.library.custom_op("mambaic::ss2d_core_fwd_cuda", mutates_args=())
def ss2d_core_fwd_cuda(
    u: torch.Tensor, x_proj_weight: torch.Tensor, dt_projs_weight: torch.Tensor, dt_projs_bias: torch.Tensor,
    A_logs: torch.Tensor, Ds: torch.Tensor, save_states: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, H, W, dim) in u's dtype, computed in float32, and the tile states (float32; empty
    unless save_states)."""
    f, dtype = torch.float32, u.dtype
    batch, D, H, W = u.shape
    L = H * W
    w_x, w_dt, A, skip, bias, R, N = _weights32(x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)
    C = R + 2 * N
    u = u.to(f).contiguous()
    cols = u.new_empty((batch, D, W, H))
    _ext.transpose(u.view(batch * D, H, W), cols.view(batch * D, W, H), False)
    seqs = (u.view(batch, D, L), cols.view(batch, D, L))
    # x_proj of directions (0, 2) on rows and (1, 3) on cols: each in its sequence's order
    projs = [torch.matmul(w_x[first::2].reshape(2 * C, D), seqs[first]) for first in (0, 1)]
    acc = [torch.zeros((batch, D, L), dtype=f, device=u.device) for _ in range(2)]
    states = u.new_empty(_states_shape(u, N)) if save_states else None
    _ext.ss2d_fwd(*seqs, *projs, w_dt.contiguous(), A.contiguous(), skip.contiguous(), bias.contiguous(), *acc, states)
    del cols, seqs, projs
    _ext.transpose(acc[1].view(batch * D, W, H), acc[0].view(batch * D, H, W), True)
    del acc[1]
    out = u.new_empty((batch, L, D))
    _ext.transpose(acc[0], out, False)
    return out.view(batch, H, W, D).to(dtype), states if save_states else u.new_empty((0,))


@ss2d_core_fwd_cuda.register_fake
def _(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, save_states):
    batch, D, H, W = u.shape
    shape = _states_shape(u, A_logs.shape[1]) if save_states else (0,)
    return u.new_empty((batch, H, W, D)), u.new_empty(shape, dtype=torch.float32)


@torch.library.custom_op("mambaic::ss2d_core_bwd_cuda", mutates_args=())
def ss2d_core_bwd_cuda(
    dout: torch.Tensor, u: torch.Tensor, x_proj_weight: torch.Tensor, dt_projs_weight: torch.Tensor,
    dt_projs_bias: torch.Tensor, A_logs: torch.Tensor, Ds: torch.Tensor, states: torch.Tensor,
) -> list[torch.Tensor]:
    """The gradients of ss2d_core_fwd_cuda's six inputs for dout (batch, H, W, dim), each in its
    input's dtype, computed in float32, from the forward's tile states (or, when empty, the scans
    run again for them)."""
    f = torch.float32
    batch, D, H, W = u.shape
    weights = _weights32(x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)
    A = weights[2]
    u32, dout32 = u.to(f).contiguous(), dout.to(f).contiguous()
    # A group of whole images at a time: the backward holds about ten of the group's maps, so a
    # 4K-sized batch in one go would need more than the GPU has (the images are independent; the
    # weights' gradients add up over the groups).
    per_group = max(1, _GROUP_ELEMENTS // max(1, D * H * W))
    du = torch.empty_like(u32)
    totals = None
    for start in range(0, batch, per_group):
        images = slice(start, min(batch, start + per_group))
        group_states = states[:, :, images] if states.numel() else None
        parts = _bwd_images(dout32[images], u32[images], weights, du[images], group_states)
        totals = parts if totals is None else [t + p for t, p in zip(totals, parts)]
    dw_x, dw_dt, dA, dD, dbias = totals if totals is not None else [torch.zeros_like(w) for w in
                                                                     (weights[0], weights[1], A, weights[3], weights[4])]
    dA_logs = (dA * A).reshape(A_logs.shape)  # A = -exp(A_logs)
    grads = (du, dw_x, dw_dt, dbias.reshape(dt_projs_bias.shape), dA_logs, dD.reshape(Ds.shape))
    inputs = (u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)
    return [g.to(t.dtype) for g, t in zip(grads, inputs)]


_GROUP_ELEMENTS = 2**29  # elements of one (batch, dim, H, W) map the backward takes at a time (2 GiB in float32)


def _bwd_images(dout32, u32, weights, du, states):
    """ss2d_core_bwd_cuda on a group of images, all float32: writes du (contiguous, u32's shape) and
    returns the weights' gradients from these images alone (x_proj, dt_proj, A, skip D, delta bias).
    ``states``: these images' slice of the forward's tile states, or None to run the scans again."""
    batch, D, H, W = u32.shape
    L = H * W
    w_x, w_dt, A, skip, bias, R, N = weights
    C = R + 2 * N
    dy_rows = u32.new_empty((batch, D, H, W))  # dout in the maps' layout
    _ext.transpose(dout32.view(batch, L, D), dy_rows.view(batch, D, L), False)
    dw_x, dw_dt = torch.empty_like(w_x), torch.empty_like(w_dt)
    dA, dD, dbias = torch.empty_like(A), torch.empty_like(skip), torch.empty_like(bias)
    for first in (1, 0):  # cols (directions 1, 3), then rows (0, 2)
        pair = slice(first, None, 2)  # directions first and first + 2 (a slice: no index tensor to copy)
        if first == 1:
            seq, dy = u32.new_empty((batch, D, W, H)), u32.new_empty((batch, D, W, H))
            _ext.transpose(u32.view(batch * D, H, W), seq.view(batch * D, W, H), False)
            _ext.transpose(dy_rows.view(batch * D, H, W), dy.view(batch * D, W, H), False)
            seq, dy = seq.view(batch, D, L), dy.view(batch, D, L)
        else:
            seq, dy = u32.view(batch, D, L), dy_rows.view(batch, D, L)
        w_pair = w_x[first::2].reshape(2 * C, D)
        proj = torch.matmul(w_pair, seq)  # (batch, 2 (R + 2N), L): direction k's rows at (k // 2) C
        delta = seq.new_empty((2, batch, D, L))
        for i, k in enumerate((first, first + 2)):
            torch.matmul(w_dt[k], proj[:, i * C : i * C + R], out=delta[i])
        A_p, skip_p, bias_p = A[pair].contiguous(), skip[pair].contiguous(), bias[pair].contiguous()
        if states is None:
            pair_states = _ext.ss2d_pair_states(seq, delta, proj, A_p, skip_p, bias_p, R)
        else:  # contiguous unless the batch is split into groups
            pair_states = states[first].contiguous()
        dseq, ddelta, dproj, dA[pair], dD[pair], dbias[pair] = _ext.ss2d_pair_bwd(
            seq, dy, delta, proj, A_p, skip_p, bias_p, pair_states, R)
        del pair_states, delta
        for i, k in enumerate((first, first + 2)):
            rank_rows = proj[:, i * C : i * C + R]
            dproj[:, i * C : i * C + R] = torch.matmul(w_dt[k].t(), ddelta[i])
            dw_dt[k] = torch.bmm(ddelta[i], rank_rows.transpose(1, 2)).sum(0)
        del ddelta
        dw_x[first::2] = torch.bmm(dproj, seq.transpose(1, 2)).sum(0).view(2, C, D)
        dseq.baddbmm_(w_pair.t().expand(batch, D, 2 * C), dproj)
        del dproj, proj
        if first == 1:
            _ext.transpose(dseq.view(batch * D, W, H), du.view(batch * D, H, W), False)
        else:
            du += dseq.view(batch, D, H, W)
    return dw_x, dw_dt, dA, dD, dbias


@ss2d_core_bwd_cuda.register_fake
def _(dout, u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, states):
    return [torch.empty_like(t) for t in (u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)]


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:6], output[1])


def _backward(ctx, dout, _dstates):
    *inputs, states = ctx.saved_tensors
    grads = torch.ops.mambaic.ss2d_core_bwd_cuda(dout, *inputs, states)
    return (*(g if needs else None for g, needs in zip(grads, ctx.needs_input_grad[:6])), None)


ss2d_core_fwd_cuda.register_autograd(_backward, setup_context=_setup_context)


def ss2d_core(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds):
    """The backend entry point registered with _backend (arguments already checked). The tile states
    are saved only when a gradient may be asked for."""
    inputs = (u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)
    save = SAVE_TILE_STATES and torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    return torch.ops.mambaic.ss2d_core_fwd_cuda(*inputs, save)[0]


SAVE_TILE_STATES = True  # the forward keeps what the backward needs (module docstring: the measured cost)
_MAX_RANK = 64  # delta-rank rows staged per tile in shared memory (csrc/selective_scan.h: kMaxRank)


def supports(device: str, dtype: torch.dtype, d_state: int, dt_rank: int = 0, **_) -> str | None:
    if dt_rank > _MAX_RANK:
        return f"the cuda ss2d_core stages at most {_MAX_RANK} delta-rank rows per tile, got dt_rank={dt_rank}"
    return _scan.supports(device, dtype, d_state)


_backend.register("ss2d_core", "cuda", ss2d_core, supports)
