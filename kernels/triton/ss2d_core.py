"""`triton` backend of ss2d_core: one scan kernel per direction that reads u and the x_proj output by
index and adds its output into one of two float32 accumulators.

No tensor holds the four directions (no (batch, 4, dim, L) copy, delta or scan output):

    column-major pair first (k = 1, 3), then the row-major pair (k = 0, 2); per pair:
        seq       cols = u transposed (batch, dim, W, H) by a tiled transpose kernel, or u itself
        dbl       = x_proj_weight[k, k + 2] @ seq   (batch, 2 (R + 2N), L), in seq's order
        acc       one float32 (batch, dim, L) accumulator
        direction k, then k + 2 (one launch each):
            step t reads seq and dbl at position t, or L - 1 - t for the reversed k + 2: index
                  arithmetic, no flipped copy
            delta_t = dt_projs_weight[k] @ (the R rows of dbl at t): one matmul into a buffer that
                  the four directions share, or in the scan's registers (see "Delta")
            B_t, C_t = the next 2N rows of dbl at t
            acc (+)= y_t at the step's position
        seq (if cols) and dbl are freed before the next pair starts
    out = acc_rows + acc_cols transposed back, by one tiled kernel: (batch, H, W, dim),
          channel-last and contiguous for out_norm, in u's dtype

x_proj depends on the position only. It runs as two matmuls, one per pair's order, rather than
one on u followed by a transposed read of the column-major directions' rows: same flops, and
every load of the scan is then contiguous along the scan (a transposed read would touch one float
per 32-byte sector). Live (batch, dim, L) maps besides u: cols, its accumulator and delta, then
the two accumulators and delta, then the two accumulators and the output.

Traffic per call, in (batch, dim, L) maps of float32: the transpose reads u and writes cols (2),
the x_proj matmuls read u and cols (2), the scans read their sequences (4), the accumulators are
written by k = 0, 1 and read and written by k = 2, 3 (6), and the merge reads both and writes
the output (3): 17, plus the projection rows, which each program shares among its channels, and
with delta from the matmul (the default) 8 more (each direction writes and reads it): 25.
The composition of the separate ops moves about 30 (xs written and read by the projection and
the scan, delta written and read, the scan outputs written and read by the merge).

Delta. The design reads the R rows of the projection and computes delta in the scan's
registers, never writing it (delta_in_registers=True, tested like the default). Measured on an
H200 (2026-11-29, dim 512, 768 x 768, R = 16, one direction): main pass 10.3 ms with it, 6.0 ms
with delta read from memory; chunk summary 7.7 against 2.7 ms. Every thread loads the R rows for
its own (channel, step) elements, so each row is read BD = 8 times from L1, and that load
traffic, not the FMAs, costs twice the scan. Until the projection runs as one small matmul per
tile (tl.dot on a [channels, R] x [R, steps] block, which needs the scan tile's channel axis
padded to 16), the default computes delta with one cuBLAS matmul per direction into a single
(batch, dim, L) buffer shared by the four directions: one map written and read per direction
(about 0.6 ms here) instead of 9 ms of L1 traffic, and still no four-direction tensor.

Determinism. Each launch adds its output into the accumulator at positions it alone owns, the
launches run in a fixed order on one stream, and each scan combines in the fixed order of the
selective_scan kernel: the output is bit-identical from run to run, with no atomics. The sum
is ((y0 + y2) in rows) + ((y1 + y3) in cols), the order of cross_merge.

The scan's arithmetic (pass 1, the segment combine, pass 2, the chunking of L into programs) is
the selective_scan kernel's (``selective_scan.py``: _tile_states, _tile_output, the chunk
summary and carry passes); only the loads and the output differ.

Backward. The op's autograd formula recomputes one direction at a time (the projections, that
direction's sequence and delta, and the scan with its tile states) and backpropagates it before
the next: nothing is saved by the forward beyond its inputs, and the live set of the backward is
a few (batch, dim, L) maps, never four.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _backend
from .._backend import profiled_range
from ..pytorch.ss2d_core import register_fused_core
from . import selective_scan as _scan
from .selective_scan import (
    _FWD_PROGRAMS_PER_SM,
    _FWD_TILES,
    _carry_chunks,
    _chunking,
    _lane_rows,
    _load_bc,
    _load_tile,
    _program_setup,
    _split,
    _summary_span,
    _table,
    _tile_config,
    _tile_output,
    _tile_states,
    _tile_steps,
    _tracing,
)


# Delta from a cuBLAS matmul per direction (False) or computed by the scan (True): see "Delta".
_DELTA_IN_REGISTERS = False


@triton.jit
def _direction_loads(u_ptr, dbl_ptr, wdt_ptr, delta_ptr, row, d_c, dts_row, toff, t0, L, R: tl.constexpr,
                     b_rows, bc_nm, r_t, i_j, i_n,
                     NPI: tl.constexpr, BD: tl.constexpr, NPL: tl.constexpr, Q: tl.constexpr,
                     S: tl.constexpr, S2: tl.constexpr, EVEN_N: tl.constexpr, MASKED: tl.constexpr,
                     REV: tl.constexpr, DELTA_IN_REGISTERS: tl.constexpr):
    # One tile of direction k's sequence, delta before its bias, and B, at steps t0 + toff (the
    # position is the step, or L - 1 - step for a reversed direction).
    tt = t0 + toff
    mm = (L - 1 - tt) if REV else tt
    u = _load_tile(u_ptr, row + mm, tt, L, MASKED, None)
    if DELTA_IN_REGISTERS:
        # delta = dt_proj(the R rows): one [steps] row of the projection per r, shared by the BD
        # channels, times their weights; summed in the fixed order r = 0 ... R - 1 (R constexpr,
        # unrolled). Each thread loads the rows for its own (channel, step) elements, so every
        # row is read BD times from L1: at R = 16 that took the kernel from 6.0 to 10.3 ms, twice
        # the scan itself (H200, 2026-11-29; see "Delta" in the module docstring).
        pre = tl.zeros(u.shape, dtype=tl.float32)
        for r in tl.static_range(R):
            w = tl.load(wdt_ptr + d_c * R + r)
            pre += w * _load_tile(dbl_ptr, dts_row + r * L + mm, tt, L, MASKED, None)
    else:
        pre = _load_tile(delta_ptr, row + mm, tt, L, MASKED, None)
    Bt = _load_bc(dbl_ptr, b_rows, bc_nm, r_t, t0, L, i_j, i_n, NPI, NPL, Q, S, S2, BD, MASKED, not EVEN_N, REV)
    return u, pre, Bt


@triton.jit
def _direction_setup(A_ptr, D_ptr, bias_ptr, L, KD, N, R: tl.constexpr, bstride,
                     NPI: tl.constexpr, NPL: tl.constexpr, Q: tl.constexpr, S: tl.constexpr,
                     S2: tl.constexpr, BD: tl.constexpr, HAS_D: tl.constexpr):
    # _program_setup for one direction (one group of KD = dim channels), plus the rows of the
    # projection: delta's R rows start at dts_row, B's N rows at R, C's at R + N.
    (pid_d, b, i_j, i_n, i_s, i_q4, dm, nm, row, brow, toff, A2, A2q, bias, Dv,
     _, _, _, ch4, n4, row_mask, ch_mask) = _program_setup(
        A_ptr, D_ptr, bias_ptr, L, KD, KD, N, 1, NPI, NPL, Q, S, S2, BD, HAS_D, True)
    d_c = tl.minimum(pid_d * BD + tl.arange(0, BD)[None, None, :, None, None, None], KD - 1)
    dts_row = b.to(tl.int64) * bstride
    b_rows, bc_nm, r_t = _lane_rows(dts_row + R * L, N, L, NPI, NPL, Q, S, S2, BD)
    c_rows, _, _ = _lane_rows(dts_row + (R + N) * L, N, L, NPI, NPL, Q, S, S2, BD)
    return (pid_d, b, i_j, i_n, i_s, i_q4, dm, row, toff, A2, A2q, bias, Dv, d_c, dts_row,
            b_rows, c_rows, bc_nm, r_t, ch4, n4, row_mask, ch_mask)


@triton.jit
def _ss2d_direction_fwd_kernel(
    u_ptr, dbl_ptr, wdt_ptr, delta_ptr, A_ptr, D_ptr, bias_ptr, acc_ptr, carry_ptr,
    L, KD, N, bstride, n_chunks, chunk_tiles, R: tl.constexpr,
    NPI: tl.constexpr, NPL: tl.constexpr, Q: tl.constexpr, S: tl.constexpr, S2: tl.constexpr,
    BD: tl.constexpr, EVEN_N: tl.constexpr, CHUNKED: tl.constexpr, REV: tl.constexpr,
    ACCUMULATE: tl.constexpr, DELTA_IN_REGISTERS: tl.constexpr,
):
    """One direction's scan: BD channels of image program_id(1), over chunk program_id(2) (all of
    L when not CHUNKED), from its carry; y is stored into (ACCUMULATE: added to) acc at each step's
    position. A, D, bias, wdt: this direction's (dim, N), (dim,), (dim,), (dim, R)."""
    T: tl.constexpr = Q * S * S2
    (pid_d, b, i_j, i_n, i_s, i_q4, dm, row, toff, A2, A2q, bias, Dv, d_c, dts_row,
     b_rows, c_rows, bc_nm, r_t, ch4, n4, row_mask, _) = _direction_setup(
        A_ptr, D_ptr, bias_ptr, L, KD, N, R, bstride, NPI, NPL, Q, S, S2, BD, True)
    _, first, stop, last_chunk, carry, n_full = _scan._chunk_span(
        carry_ptr, ch4, n4, row_mask, L, N, n_chunks, chunk_tiles, T, NPI, BD, NPL, CHUNKED)
    for tile in range(first, stop):
        carry = _direction_tile(u_ptr, dbl_ptr, wdt_ptr, delta_ptr, acc_ptr, row, d_c, dts_row, toff, tile * T, L, R, carry,
                                A2, A2q, bias, Dv, dm, b_rows, c_rows, bc_nm, r_t, i_j, i_n, i_s, i_q4,
                                NPI, BD, NPL, Q, S, S2, EVEN_N, False, REV, ACCUMULATE, DELTA_IN_REGISTERS)
    if last_chunk and n_full * T < L:
        carry = _direction_tile(u_ptr, dbl_ptr, wdt_ptr, delta_ptr, acc_ptr, row, d_c, dts_row, toff, n_full * T, L, R, carry,
                                A2, A2q, bias, Dv, dm, b_rows, c_rows, bc_nm, r_t, i_j, i_n, i_s, i_q4,
                                NPI, BD, NPL, Q, S, S2, EVEN_N, True, REV, ACCUMULATE, DELTA_IN_REGISTERS)


@triton.jit
def _direction_tile(u_ptr, dbl_ptr, wdt_ptr, delta_ptr, acc_ptr, row, d_c, dts_row, toff, t0, L, R: tl.constexpr, carry,
                    A2, A2q, bias, Dv, dm, b_rows, c_rows, bc_nm, r_t, i_j, i_n, i_s, i_q4,
                    NPI: tl.constexpr, BD: tl.constexpr, NPL: tl.constexpr, Q: tl.constexpr,
                    S: tl.constexpr, S2: tl.constexpr, EVEN_N: tl.constexpr, MASKED: tl.constexpr,
                    REV: tl.constexpr, ACCUMULATE: tl.constexpr, DELTA_IN_REGISTERS: tl.constexpr):
    tt = t0 + toff
    u, pre, Bt = _direction_loads(u_ptr, dbl_ptr, wdt_ptr, delta_ptr, row, d_c, dts_row, toff, t0, L, R,
                                  b_rows, bc_nm, r_t, i_j, i_n, NPI, BD, NPL, Q, S, S2, EVEN_N, MASKED, REV, DELTA_IN_REGISTERS)
    pre, dt, dtu, a, x, Pseg, start, carry, dsum = _tile_states(
        u, pre, Bt, tt, L, carry, A2, A2q, bias, i_j, i_s, i_q4, NPI, BD, NPL, Q, S, S2, True, True, MASKED)
    Ct = _load_bc(dbl_ptr, c_rows, bc_nm, r_t, t0, L, i_j, i_n, NPI, NPL, Q, S, S2, BD, MASKED, False, REV)
    y = _tile_output(u, a, x, start, Ct, Dv, i_j, i_s, S, S2, True)
    offs = row + ((L - 1 - tt) if REV else tt)
    mask = dm & (tt < L) if MASKED else dm
    if ACCUMULATE:
        y += tl.load(acc_ptr + offs, mask=mask, other=0.0)
    tl.store(acc_ptr + offs, y, mask=mask)
    return carry


@triton.jit
def _summary_tile(u_ptr, dbl_ptr, wdt_ptr, delta_ptr, row, d_c, dts_row, toff, t0, L, R: tl.constexpr, carry,
                  A2, A2q, bias, b_rows, bc_nm, r_t, i_j, i_n, i_s, i_q4,
                  NPI: tl.constexpr, BD: tl.constexpr, NPL: tl.constexpr, Q: tl.constexpr,
                  S: tl.constexpr, S2: tl.constexpr, EVEN_N: tl.constexpr, MASKED: tl.constexpr,
                  REV: tl.constexpr, DELTA_IN_REGISTERS: tl.constexpr):
    # The state leaving one tile and the tile's sum of dt (the summary pass needs no C, no y).
    u, pre, Bt = _direction_loads(u_ptr, dbl_ptr, wdt_ptr, delta_ptr, row, d_c, dts_row, toff, t0, L, R,
                                  b_rows, bc_nm, r_t, i_j, i_n, NPI, BD, NPL, Q, S, S2, EVEN_N, MASKED, REV,
                                  DELTA_IN_REGISTERS)
    pre, dt, dtu, a, x, Pseg, start, carry, ds = _tile_states(
        u, pre, Bt, t0 + toff, L, carry, A2, A2q, bias, i_j, i_s, i_q4, NPI, BD, NPL, Q, S, S2, True, True, MASKED)
    return carry, ds


@triton.jit
def _ss2d_direction_summary_kernel(
    u_ptr, dbl_ptr, wdt_ptr, delta_ptr, A_ptr, bias_ptr, hend_ptr, dts_ptr,
    L, KD, N, bstride, n_chunks, chunk_tiles, R: tl.constexpr,
    NPI: tl.constexpr, NPL: tl.constexpr, Q: tl.constexpr, S: tl.constexpr, S2: tl.constexpr,
    BD: tl.constexpr, EVEN_N: tl.constexpr, REV: tl.constexpr, DELTA_IN_REGISTERS: tl.constexpr,
):
    """Chunk pass 1 of one direction (selective_scan's _fwd_chunk_summary_kernel with this op's
    loads): each chunk's end state from a zero start, and its sum of dt."""
    T: tl.constexpr = Q * S * S2
    c = tl.program_id(2)
    (pid_d, b, i_j, i_n, i_s, i_q4, dm, row, toff, A2, A2q, bias, Dv, d_c, dts_row,
     b_rows, c_rows, bc_nm, r_t, ch4, n4, row_mask, ch_mask) = _direction_setup(
        A_ptr, A_ptr, bias_ptr, L, KD, N, R, bstride, NPI, NPL, Q, S, S2, BD, False)
    n_full, first, stop, carry, dsum = _summary_span(c, chunk_tiles, L, T, NPI, BD, NPL)
    for tile in range(first, stop):
        carry, ds = _summary_tile(u_ptr, dbl_ptr, wdt_ptr, delta_ptr, row, d_c, dts_row, toff, tile * T, L, R, carry,
                                  A2, A2q, bias, b_rows, bc_nm, r_t, i_j, i_n, i_s, i_q4,
                                  NPI, BD, NPL, Q, S, S2, EVEN_N, False, REV, DELTA_IN_REGISTERS)
        dsum += ds
    if c == n_chunks - 1 and n_full * T < L:
        carry, ds = _summary_tile(u_ptr, dbl_ptr, wdt_ptr, delta_ptr, row, d_c, dts_row, toff, n_full * T, L, R, carry,
                                  A2, A2q, bias, b_rows, bc_nm, r_t, i_j, i_n, i_s, i_q4,
                                  NPI, BD, NPL, Q, S, S2, EVEN_N, True, REV, DELTA_IN_REGISTERS)
        dsum += ds
    tl.store(_table(hend_ptr, ch4, n4, n_chunks, c, N), carry, mask=row_mask)
    tl.store(dts_ptr + ch4 * n_chunks + c, dsum, mask=ch_mask)


@triton.jit
def _transpose_kernel(src_ptr, dst_ptr, H, W, BH: tl.constexpr, BW: tl.constexpr):
    """dst[p, w, h] = src[p, h, w], one BH x BW tile of a plane p (image * dim + channel) per
    program: a tiled transpose, both sides coalesced (the layouts meet in shared memory). PyTorch's
    transpose(...).contiguous() reads or writes one float per sector here. One grid axis, the
    tiles of a plane fastest: the planes on a second axis passed CUDA's limit of 65535 there
    (batch * dim, e.g. 8400 images of 32 channels, failed to launch)."""
    tiles_w = tl.cdiv(W, BW)
    tiles = tl.cdiv(H, BH) * tiles_w
    tile = tl.program_id(0) % tiles
    p = (tl.program_id(0) // tiles).to(tl.int64) * H * W
    h = (tile // tiles_w) * BH + tl.arange(0, BH)[:, None]
    w = (tile % tiles_w) * BW + tl.arange(0, BW)[None, :]
    m = (h < H) & (w < W)
    tl.store(dst_ptr + p + w * H + h, tl.load(src_ptr + p + h * W + w, mask=m), mask=m)


@triton.jit
def _merge_kernel(rows_ptr, cols_ptr, out_ptr, D, H, W, BD: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
    """out[b, h, w, d] = rows[b, d, h, w] + cols[b, d, w, h]: the two accumulators summed into the
    channel-last map SS2D's out_norm reads, in out's dtype. Tiles of BD channels x BH x BW
    positions of image program_id(2), each load and the store coalesced along its own axis."""
    b = tl.program_id(2).to(tl.int64)
    tiles_w = tl.cdiv(W, BW)
    d = tl.program_id(1) * BD + tl.arange(0, BD)[:, None, None]
    h = (tl.program_id(0) // tiles_w) * BH + tl.arange(0, BH)[None, :, None]
    w = (tl.program_id(0) % tiles_w) * BW + tl.arange(0, BW)[None, None, :]
    m = (d < D) & (h < H) & (w < W)
    plane = (b * D + d) * H * W
    y = tl.load(rows_ptr + plane + h * W + w, mask=m) + tl.load(cols_ptr + plane + w * H + h, mask=m)
    tl.store(out_ptr + ((b * H + h) * W + w) * D + d, y.to(out_ptr.dtype.element_ty), mask=m)


# ----------------------------------------------------------------------------------------------
# Launcher, registration, autograd
# ----------------------------------------------------------------------------------------------


def _transposed(u: torch.Tensor) -> torch.Tensor:
    """u's column-major copy (batch, dim, W * H): the sequence of directions 1 and 3."""
    batch, D, H, W = u.shape
    cols = u.new_empty((batch, D, H * W))
    tiles = triton.cdiv(H, 32) * triton.cdiv(W, 32)
    torch.library.wrap_triton(_transpose_kernel)[(tiles * batch * D,)](u, cols, H, W, BH=32, BW=32, num_warps=4)
    return cols


@torch.library.triton_op("mambaic::ss2d_core_fwd_triton", mutates_args=())
def ss2d_core_fwd_triton(
    u: torch.Tensor, x_proj_weight: torch.Tensor, dt_projs_weight: torch.Tensor, dt_projs_bias: torch.Tensor,
    A_logs: torch.Tensor, Ds: torch.Tensor, n_chunks: int, delta_in_registers: bool,
) -> torch.Tensor:
    """(batch, dim, H, W) -> (batch, H, W, dim) in u's dtype, contiguous. L is cut into n_chunks
    chunks per direction (1: one pass; rounded so none is empty). delta_in_registers: the scan
    computes delta from the projection's R rows itself, instead of reading it from one
    (batch, dim, L) matmul output per direction (see "Delta")."""
    return _ss2d_core_fwd(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, n_chunks, delta_in_registers)


def _ss2d_core_fwd(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, n_chunks, delta_in_registers):
    # The launcher, apart from its registration so that a test can watch its allocations.
    batch, D, H, W = u.shape
    L = H * W
    R, N = dt_projs_weight.shape[2], A_logs.shape[1]
    C = R + 2 * N
    cfg = _tile_config(N, _FWD_TILES)
    if _tracing(u):
        return u.new_empty((batch, H, W, D))
    A = (-torch.exp(A_logs.float())).view(4, D, N)
    skip = Ds.float().view(4, D)
    bias = dt_projs_bias.float().contiguous()
    w_dt = dt_projs_weight.float().contiguous()
    w_dt_u = dt_projs_weight.to(u.dtype)
    w_x = x_proj_weight.to(u.dtype)
    n_chunks, per_chunk = _split(triton.cdiv(L, _tile_steps(_FWD_TILES)), n_chunks)
    grid = (triton.cdiv(D, cfg["BD"]), batch, n_chunks)
    carries = dsums = u  # unread without chunks
    if n_chunks > 1:
        carries = u.new_empty((batch, D, n_chunks, N), dtype=torch.float32)
        dsums = u.new_empty((batch, D, n_chunks), dtype=torch.float32)
    # one delta buffer, reused by the four directions (unread when delta_in_registers)
    delta = u if delta_in_registers else u.new_empty((batch, D, L))
    # The column-major pair first, then the row-major pair: cols and its projection are freed
    # before the rows' accumulator exists, so at most four (batch, dim, L) maps are live (u,
    # cols or the second accumulator, the first accumulator, delta), never five.
    acc = {}
    for first in (1, 0):
        seq = _transposed(u) if first == 1 else u.view(batch, D, L)
        dbl = torch.matmul(w_x[first::2].reshape(2 * C, D), seq)  # (batch, 2 (R + 2N), L) in seq's order
        acc[first] = u.new_empty((batch, D, L), dtype=torch.float32)
        for k in (first, first + 2):
            rows = dbl[:, (k // 2) * C :]  # this direction's R + 2N rows (batch stride 2 (R + 2N) L)
            if not delta_in_registers:
                torch.matmul(w_dt_u[k], rows[:, :R], out=delta)  # in seq's (unreversed) order
            common = dict(L=L, KD=D, N=N, R=R, bstride=2 * C * L, n_chunks=n_chunks, chunk_tiles=per_chunk,
                          REV=k >= 2, DELTA_IN_REGISTERS=delta_in_registers, num_warps=_FWD_TILES.warps, **cfg)  # fmt: skip
            with profiled_range("selective_scan"):  # the scan passes, for bench/latency.py's breakdown
                if n_chunks > 1:
                    torch.library.wrap_triton(_ss2d_direction_summary_kernel)[grid](
                        seq, rows, w_dt[k], delta, A[k], bias[k], carries, dsums,
                        **common)
                    _carry_chunks(carries, dsums, A[k], reverse=False)
                torch.library.wrap_triton(_ss2d_direction_fwd_kernel)[grid](
                    seq, rows, w_dt[k], delta, A[k], skip[k], bias[k], acc[first], carries,
                    CHUNKED=n_chunks > 1, ACCUMULATE=k >= 2, **common)
        del seq, dbl, rows
    del delta
    out = u.new_empty((batch, H, W, D))
    grid = (triton.cdiv(H, 16) * triton.cdiv(W, 16), triton.cdiv(D, 32), batch)
    torch.library.wrap_triton(_merge_kernel)[grid](acc[0], acc[1], out, D, H, W, BD=32, BH=16, BW=16, num_warps=8)
    return out


# the backward: one direction at a time over this backend's scan (see "Backward")
register_fused_core(ss2d_core_fwd_triton, lambda: _scan.selective_scan, extra_args=2, fake=False)


def ss2d_core(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds):
    """The backend entry point registered with _backend (arguments already checked)."""
    batch, D, H, W = u.shape
    n_chunks, _ = _chunking(batch, D, H * W, _FWD_TILES, u.device, _FWD_PROGRAMS_PER_SM)
    return torch.ops.mambaic.ss2d_core_fwd_triton(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds,
                                                  n_chunks, _DELTA_IN_REGISTERS)  # fmt: skip


def _supports(device: str, dtype: torch.dtype, d_state: int, **meta) -> str | None:
    return _scan._supports(device, dtype, d_state)


_backend.register("ss2d_core", "triton", ss2d_core, _supports)
