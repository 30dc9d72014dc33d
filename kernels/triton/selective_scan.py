"""`triton` backend of selective_scan: one pass over L, parallel over L inside each program.

Semantics are those of ``kernels/reference/selective_scan.py``: for channel d of group
k = d // (KD / K) and state n,
``h_t = exp(dt_t A[d, n]) h_{t-1} + dt_t B[k, n, t] u_t`` and ``y_t = sum_n C[k, n, t] h_t + D[d] u_t``,
with ``dt = softplus(delta + delta_bias)`` (each part optional). State and sums are float32.

Minimum bytes (what the benchmark divides by): read u, delta, B and C once, write y once:
``(2 * batch * KD * L + 2 * batch * K * N * L) * itemsize + batch * KD * L * itemsize``.
At batch 1, KD 2048, L 589,824, N 16, K 4, fp32 that is 14.8 GB; the kernel reads and writes
exactly that (plus A, D, delta_bias) when it runs in one pass ("Why one pass" below); the
chunked path ("Chunks") reads u, delta and B a second time.

Algorithm (forward). One program owns BD channels of one image and walks L in tiles of
T = Q * SEG steps. Inside a tile the Q segments of SEG consecutive steps run on Q different
lanes, so a whole image (batch 1) gives KD * NPL * Q threads (32K at KD 2048); where that is
too few programs, L is also cut into chunks (below). Each thread owns one channel, NPI = N / NPL
of the states and one segment:

  pass 1   the segment's end state from a zero start, ``h = a_p h + x_p`` over its SEG steps
           (a_p = exp2(dt_p * A log2(e)), x_p = dt_p u_p B_p), one FFMA per element;
  combine  an exclusive scan over the Q segments of the affine maps h -> P h + h_end, where
           P = exp2(A log2(e) * sum(dt over the segment)) is the segment's decay; the tile's
           incoming state (`carry`) enters as the start of segment 0. This is a lane-level
           scan on N / NPL values per thread, amortised over SEG steps;
  pass 2   the exact states from each segment's true start, again one FFMA per element, and
           ``y = sum_n C h`` (in-thread over NPI states, then across the NPL lanes).

The two passes reuse a_p and x_p kept in registers, so every exp2 is computed once (the
exp2 per (channel, state, step) is the real cost: 19e9 of them at the target shape). All
combines run in a fixed order that depends only on the constexpr tile shape, never on
timing: the forward is bit-identical from run to run, with no atomics.

Chunks. One program walks the tiles of its channels in order, so one image (KD = 2048 channels,
8 per program) is only 256 programs: under one wave of an H100 at this kernel's occupancy, each
program walking all of L. When the grid is that small, L is cut into chunks, one program each:
  chunk pass 1  (_fwd_chunk_summary_kernel) each chunk's end state from a zero start and its sum
                of dt, from u, delta and B only (no C, no y);
  chunk pass 2  (_chunk_carry_kernel) a sequential walk over the chunks per (image, channel,
                state): the state entering chunk c, carry_{c+1} = exp(A sum_c dt) carry_c + end_c;
  main pass     the one-pass kernel on each chunk, started from its carry.
This costs a second read of u, delta and B and a second exp2 per element, so it is used only when
it buys parallelism (_chunking: the shape and the GPU's SM count decide, so the rounding is the
same on every run). The backward mirrors it: a reverse summary of the adjoint per chunk (from
delta, C and dy), the same carry walk in reverse, then the backward kernel per chunk.

Why one pass where the grid is large enough. The textbook chunked scan (pass 1: chunk summaries, pass 2: combine, pass 3:
recompute) reads u and delta twice and computes every exp2 twice; at the target shape that
is 24 GB instead of 14.8 GB and twice the MUFU work, which cannot meet 7.5 ms on an H100.
Splitting L over lanes inside a program keeps the data in registers between the passes.

Layout. The compute tiles are 6-D ``[S2, NPI, BD, NPL, Q, S]`` with time t = q*SEG + j*S + s
(SEG = S2 * S): 16-byte vectors along S, lanes over (Q, NPL, BD), warps over BD, and S2, NPI, S
inside a thread, which is what makes the per-segment recurrences plain sequential in-thread
code (checked on the sm_90 SASS with Triton 3.6 and 3.8: ~12 instructions per
(channel, state, step) in the forward loop, no spills). B and C are loaded as S2 * NPI pieces
with a single flattened lane axis so that this layout does not depend on how a Triton version
breaks ties between axes when it coalesces a load (see _lane_rows). Per-(channel, step) values (u,
delta, softplus, y) are computed in the smaller ``[S2, 1, BD, 1, Q, S]`` tiles, whose layout
the compiler picks for coalescing, and moved to the compute layout through shared memory.

Backward. The forward, when autograd needs it, also writes each tile's incoming state
(batch, KD, n_tiles, N): one state per T steps instead of all L of them. The backward walks
the tiles in reverse, recomputes the tile's states from that saved start (the same two passes),
runs the adjoint recurrence ``g_t = C_t dy_t + a_{t+1} g_{t+1}`` with the same two-pass /
lane-scan split, and forms every gradient from (g, h, a). dA, dD and d(delta_bias) are written
per (image, channel) and summed over the batch by torch (deterministic); dB and dC, summed over
the channels of a group, are first reduced over the program's channels and then added with
float32 atomics (not bit-reproducible in the last bits; the forward is).

Registration: ``mambaic::selective_scan_fwd_triton`` / ``_bwd_triton`` as ``torch.library.triton_op``
launching through ``wrap_triton`` (so torch.compile sees the kernels), with
``torch.library.register_autograd`` attaching the backward. Both work on CPU tensors under
``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .. import _backend
from . import supports_device

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453

# Tile shape (fixed, not autotuned: the combine order, hence the rounding, depends on it, and
# the forward must give the same bits on every run). S = 4 steps in a 16-byte fp32 vector;
# S2 vectors make a segment of SEG = 4 * S2 steps per thread; Q = 4 segments (lanes) per tile.
# NPL = 4 lanes share the N states of a channel, so a thread holds NPI = N / 4 states: with
# S2 = 2 (the default), 4 * 8 = 32 elements per register tile (S2 = 4: 64, ~180 registers).
class Tiles(NamedTuple):
    S: int = 4      # steps per 16-byte vector
    S2: int = 4     # vectors per segment (SEG = S * S2 steps per thread)
    Q: int = 4      # segments (lanes) per tile: T = Q * SEG steps
    NPL: int = 4    # lanes sharing the states of a channel
    warps: int = 4  # BD = warps * 32 / (NPL * Q) channels per program


# From the H100 sweep (bench/scan_sweep.py, RESULTS.md): segments of 8 steps (S2 = 2) beat 16 in both
# directions (forward 34.4 vs 37.2 ms with chunks, backward 241 vs 291 ms: fewer registers per
# thread). The forward and backward must share T (the saved states are per tile).
_FWD_TILES = Tiles(S2=2)  # 4 warps x 2 channel lanes = 8 channels per program: 256 programs at KD 2048
_BWD_TILES = Tiles(S2=2)
_MAX_N = 16  # 16 states x 8 steps per thread already use most of the register file
# Splitting L into chunks (see "Chunks" above): aim for this many programs per SM, and never make a
# chunk shorter than _MIN_CHUNK_TILES tiles. The forward gained from many small programs up to the
# largest count measured (64 chunks at the target shape); the backward lost from any split there
# (its summary pass costs more than the parallelism buys), so it splits only a grid under 2 programs
# per SM, where most SMs would otherwise idle.
_FWD_PROGRAMS_PER_SM = 128
_BWD_PROGRAMS_PER_SM = 2
_MIN_CHUNK_TILES = 16


# ----------------------------------------------------------------------------------------------
# Helpers (inlined into the kernels)
# ----------------------------------------------------------------------------------------------


@triton.jit
def _affine(a1, b1, a2, b2):
    # Composition of the maps h -> a1 h + b1 (applied first) and h -> a2 h + b2.
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _pick(x, jdx, sdx, j: tl.constexpr, i: tl.constexpr):
    # Element (j, i) of the in-thread axes 0 (S2) and 5 (S) of a 6-D compute tile, as a 4-D
    # [NPI, BD, NPL, Q] tensor. Both axes are inside a thread and j, i are constants, so the
    # selects fold away; the filler is -0.0 (built as -zeros: a literal -0.0 becomes +0.0 on the
    # way to the IR) because x + (-0.0) == x folds to nothing, while x + 0.0 costs an FADD.
    return tl.sum(tl.sum(tl.where((jdx == j) & (sdx == i), x, -tl.zeros_like(x)), axis=5), axis=0)


@triton.jit
def _put(X, v, jdx, sdx, j: tl.constexpr, i: tl.constexpr):
    # Inverse of _pick: write the 4-D v at in-thread position (j, i) of the 6-D tile X (folds to
    # register moves).
    return tl.where((jdx == j) & (sdx == i), v[None, :, :, :, :, None], X)


@triton.jit
def _softplus(x):
    # softplus with threshold 20 as torch's F.softplus, to ~1e-7 relative: max(x, 0) + log1p(e)
    # with e = exp(-|x|) in (0, 1], and log1p(e) = 2 atanh(s) = 2 s (1 + s^2/3 + s^4/5 + ...),
    # s = e / (2 + e) <= 1/3, so eight terms reach 1e-8. About 15 instructions and two MUFU ops
    # (ex2, rcp), against ~35 for log(1 + exp(x)) through the libdevice-style log, and without
    # its loss of relative accuracy for the negative x that small time steps use.
    e = tl.exp2(-tl.abs(x) * 1.4426950408889634)
    s = tl.fdiv(e, 2.0 + e)
    z = s * s
    p = 1.0 / 15.0
    p = p * z + 1.0 / 13.0
    p = p * z + 1.0 / 11.0
    p = p * z + 1.0 / 9.0
    p = p * z + 1.0 / 7.0
    p = p * z + 1.0 / 5.0
    p = p * z + 1.0 / 3.0
    p = p * z + 1.0
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + 2.0 * s * p)


@triton.jit
def _sigmoid(x):
    # d softplus / dx (1 above the threshold: sigmoid(20) rounds to 1 in float32 anyway).
    return tl.where(x > 20.0, 1.0, tl.fdiv(1.0, 1.0 + tl.exp2(-x * 1.4426950408889634)))


@triton.jit
def _segment_starts(Pseg, hend, carry, i_q4, NPI: tl.constexpr, BD: tl.constexpr,
                    NPL: tl.constexpr, Q: tl.constexpr):
    # Exclusive scan over the Q segments (lanes) of the maps h -> Pseg h + hend, started from
    # `carry` (the state entering the tile). Triton's scan is inclusive; interleaving each
    # segment with an identity map (1, 0) placed *before* it makes the identity's slot hold the
    # prefix of the segments before it, i.e. the exclusive value. The carry rides in the first
    # identity slot as the map (1, carry). Returns (start of each segment, state leaving the tile).
    first = tl.where(i_q4 == 0, carry, 0.0)
    ones = tl.full([NPI, BD, NPL, Q], 1.0, tl.float32)
    aa = tl.reshape(tl.join(ones, Pseg), [NPI, BD, NPL, 2 * Q])
    bb = tl.reshape(tl.join(first, hend), [NPI, BD, NPL, 2 * Q])
    _, bs = tl.associative_scan((aa, bb), axis=3, combine_fn=_affine)
    start, end = tl.split(tl.reshape(bs, [NPI, BD, NPL, Q, 2]))
    leaving = tl.sum(tl.where(i_q4 == Q - 1, end, -tl.zeros_like(end)), axis=3, keep_dims=True)
    return start, leaving


@triton.jit
def _segment_ends_reverse(Pseg, vloc, carry, i_q4, NPI: tl.constexpr, BD: tl.constexpr,
                          NPL: tl.constexpr, Q: tl.constexpr):
    # Mirror image of _segment_starts for the adjoint, which runs backwards in time: each
    # segment maps the adjoint entering at its end (v_in) to the one leaving at its start,
    # v_out = Pseg v_in + vloc. A reverse scan over [seg_q, id_q] pairs (the identity now *after*
    # its segment, holding `carry` for the last one) leaves in id_q the v_in of segment q and in
    # seg_0 the adjoint leaving the tile at its first step.
    last = tl.where(i_q4 == Q - 1, carry, 0.0)
    ones = tl.full([NPI, BD, NPL, Q], 1.0, tl.float32)
    aa = tl.reshape(tl.join(Pseg, ones), [NPI, BD, NPL, 2 * Q])
    bb = tl.reshape(tl.join(vloc, last), [NPI, BD, NPL, 2 * Q])
    _, bs = tl.associative_scan((aa, bb), axis=3, combine_fn=_affine, reverse=True)
    out, vin = tl.split(tl.reshape(bs, [NPI, BD, NPL, Q, 2]))
    leaving = tl.sum(tl.where(i_q4 == 0, out, -tl.zeros_like(out)), axis=3, keep_dims=True)
    return vin, leaving


@triton.jit
def _index_setup(pid_d, b, L, KD, G, N, K,
                 NPI: tl.constexpr, NPL: tl.constexpr, Q: tl.constexpr, S: tl.constexpr,
                 S2: tl.constexpr, BD: tl.constexpr):
    # Index tensors shaped for broadcasting into the 6-D compute tile [S2, NPI, BD, NPL, Q, S].
    SEG: tl.constexpr = S * S2
    i_j = tl.arange(0, S2)[:, None, None, None, None, None]
    i_n = tl.arange(0, NPI)[None, :, None, None, None, None]
    i_d = tl.arange(0, BD)[None, None, :, None, None, None]
    i_l = tl.arange(0, NPL)[None, None, None, :, None, None]
    i_q = tl.arange(0, Q)[None, None, None, None, :, None]
    i_s = tl.arange(0, S)[None, None, None, None, None, :]
    d = pid_d * BD + i_d
    dm = d < KD
    # Channels past KD (last program when BD does not divide KD) load channel KD - 1 and are
    # masked at the stores; states past N load row N - 1 of A, B, C and are neutralised by a
    # zero A (decay 1) and a zero B (masked load), so they stay 0 and add nothing to y.
    d_c = tl.minimum(d, KD - 1)
    n = i_l * NPI + i_n
    nm = n < N
    n_c = tl.minimum(n, N - 1)
    grp = d_c // G
    # int64 row offsets: batch * KD * L passes 2^31 at two target-size images.
    row = (b * KD + d_c).to(tl.int64) * L                  # [1, 1, BD, 1, 1, 1]
    brow = ((b * K + grp) * N + n_c).to(tl.int64) * L       # [1, NPI, BD, NPL, 1, 1]
    toff = i_q * SEG + i_j * S + i_s                        # [S2, 1, 1, 1, Q, S]
    return i_j, i_d, i_l, i_q, i_s, d, dm, d_c, n, nm, n_c, grp, row, brow, toff


@triton.jit
def _bc_rows(pid_d, b, KD, G, N, K, L,
             NPI: tl.constexpr, NPL: tl.constexpr, Q: tl.constexpr, S: tl.constexpr,
             S2: tl.constexpr, BD: tl.constexpr):
    # Row offsets for loading B / C (batch, K, N, L) as NPI * S2 separate [R, S] pieces, R = BD * NPL * Q
    # lanes flattened into one axis: see _lane_rows.
    R: tl.constexpr = BD * NPL * Q
    r_d = tl.arange(0, R)[:, None] // (Q * NPL)
    grp = tl.minimum(pid_d * BD + r_d, KD - 1) // G
    return _lane_rows(((b * K + grp) * N).to(tl.int64) * L, N, L, NPI, NPL, Q, S, S2, BD)


@triton.jit
def _lane_rows(base, N, L, NPI: tl.constexpr, NPL: tl.constexpr, Q: tl.constexpr, S: tl.constexpr,
               S2: tl.constexpr, BD: tl.constexpr):
    # Offsets of the N rows base + n * L (rows of L steps; base: scalar or per lane [R, 1]) as the
    # NPI pieces _load_bc takes, their state masks and the step offsets [R, S] of each lane.
    # Why pieces and not one 6-D load: the coalescing pass orders the non-contiguous axes of a
    # load by a tie-break that differs between Triton versions (3.6 gives lanes to the in-thread
    # axes S2 / NPI, 3.8 to Q / NPL / BD). With a single non-contiguous axis there is no tie, so
    # both versions give 16-byte vectors along S and lanes along R; the reshape to
    # [1, 1, BD, NPL, Q, S] and the insertion into the 6-D tile then keep S2 and NPI in-thread.
    SEG: tl.constexpr = S * S2
    R: tl.constexpr = BD * NPL * Q
    r = tl.arange(0, R)[:, None]
    r_l = (r // Q) % NPL
    r_t = (r % Q) * SEG + tl.arange(0, S)[None, :]                # [R, S] step offsets in the tile
    rows = ()
    nmasks = ()
    for i in tl.static_range(NPI):
        n = r_l * NPI + i
        rows = rows + (base + tl.minimum(n, N - 1).to(tl.int64) * L,)
        nmasks = nmasks + (n < N,)
    return rows, nmasks, r_t


@triton.jit
def _load_bc(ptr, rows, nmasks, r_t, t0, L, i_j, i_n,
             NPI: tl.constexpr, NPL: tl.constexpr, Q: tl.constexpr, S: tl.constexpr,
             S2: tl.constexpr, BD: tl.constexpr, MASKED: tl.constexpr, MASK_N: tl.constexpr,
             REV: tl.constexpr):
    # The 6-D B (or C) tile [S2, NPI, BD, NPL, Q, S] of steps t0 + ..., from NPI * S2 loads.
    # REV: step t is stored at position L - 1 - t (ss2d_core's reversed scan directions).
    X = tl.zeros([S2, NPI, BD, NPL, Q, S], dtype=tl.float32)
    for j in tl.static_range(S2):
        tt = t0 + j * S + r_t
        mm = (L - 1 - tt) if REV else tt
        for i in tl.static_range(NPI):
            if MASKED:
                if MASK_N:
                    piece = tl.load(ptr + rows[i] + mm, mask=(tt < L) & nmasks[i], other=0.0)
                else:
                    piece = tl.load(ptr + rows[i] + mm, mask=tt < L, other=0.0)
            else:
                if MASK_N:
                    piece = tl.load(ptr + rows[i] + mm, mask=nmasks[i], other=0.0)
                else:
                    piece = tl.load(ptr + rows[i] + mm)
            piece = tl.reshape(piece.to(tl.float32), [1, 1, BD, NPL, Q, S])
            X = tl.where((i_j == j) & (i_n == i), piece, X)
    return X


@triton.jit
def _load_tile(ptr, offs, tt, L, MASKED: tl.constexpr, extra_mask):
    # Full tiles load without masks (no predicates, no zero-fill); only the tail tile masks t < L.
    # extra_mask (padded states / channels) is None in the common case (constexpr-resolved).
    if MASKED:
        if extra_mask is None:
            return tl.load(ptr + offs, mask=tt < L, other=0.0).to(tl.float32)
        else:
            return tl.load(ptr + offs, mask=(tt < L) & extra_mask, other=0.0).to(tl.float32)
    else:
        if extra_mask is None:
            return tl.load(ptr + offs).to(tl.float32)
        else:
            return tl.load(ptr + offs, mask=extra_mask, other=0.0).to(tl.float32)


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------


@triton.jit
def _fwd_tile_states(u_ptr, dt_ptr, B_ptr, row, toff, t0, L, carry,
                     A2, A2q, bias, i_j, i_n, i_s, i_q4, bc_rows, bc_nm, r_t,
                     NPI: tl.constexpr, BD: tl.constexpr, NPL: tl.constexpr, Q: tl.constexpr,
                     S: tl.constexpr, S2: tl.constexpr, SOFTPLUS: tl.constexpr,
                     HAS_BIAS: tl.constexpr, EVEN_N: tl.constexpr, MASKED: tl.constexpr):
    # Loads and pass 1 + combine of one tile, for the forward and the backward's recompute:
    # (u, dt before softplus, dt, dt*u, B, a, x, each segment's decay and start, the state leaving
    # the tile, the tile's sum of dt [1, BD, 1, 1]). What a caller drops is dead code there.
    tt = t0 + toff
    # per-(channel, step) values in the small tile [S2, 1, BD, 1, Q, S]
    u = _load_tile(u_ptr, row + tt, tt, L, MASKED, None)
    pre = _load_tile(dt_ptr, row + tt, tt, L, MASKED, None)
    Bt = _load_bc(B_ptr, bc_rows, bc_nm, r_t, t0, L, i_j, i_n, NPI, NPL, Q, S, S2, BD, MASKED, not EVEN_N, False)
    pre, dt, dtu, a, x, Pseg, start, carry, dsum = _tile_states(
        u, pre, Bt, tt, L, carry, A2, A2q, bias, i_j, i_s, i_q4,
        NPI, BD, NPL, Q, S, S2, SOFTPLUS, HAS_BIAS, MASKED)
    return u, pre, dt, dtu, Bt, a, x, Pseg, start, carry, dsum


@triton.jit
def _tile_states(u, pre, Bt, tt, L, carry, A2, A2q, bias, i_j, i_s, i_q4,
                 NPI: tl.constexpr, BD: tl.constexpr, NPL: tl.constexpr, Q: tl.constexpr,
                 S: tl.constexpr, S2: tl.constexpr, SOFTPLUS: tl.constexpr,
                 HAS_BIAS: tl.constexpr, MASKED: tl.constexpr):
    # Pass 1 + combine of one tile from its loaded u, delta (before bias) and B (a kernel that
    # gets them another way, as ss2d_core's, shares the arithmetic and so the rounding). Returns
    # delta + bias (before softplus: the backward's sigmoid takes it), dt, dt*u, a, x, each
    # segment's decay and start, the state leaving the tile and the tile's sum of dt.
    SEG: tl.constexpr = S * S2
    if HAS_BIAS:
        pre = pre + bias
    dt = pre
    if SOFTPLUS:
        dt = _softplus(pre)
    if MASKED:
        dt = tl.where(tt < L, dt, 0.0)  # steps past L: decay 1, input 0, the state passes through
    dtu = dt * u
    # (dt, dt*u) x (A*log2e, B) as one multiply of joined pairs: pairing dt with the B tile makes
    # the layout pass move dt into the compute layout once (through shared memory), instead of
    # moving A into dt's layout and then every per-step slice of the state back (measured on
    # the generated code: 13 -> 9 instructions per element before softplus).
    Z = tl.join(dt, dtu) * tl.join(tl.broadcast_to(A2, Bt.shape), Bt)
    dA2, x = tl.split(Z)
    a = tl.exp2(dA2)  # MUFU.EX2: exp(dt*A) with A pre-scaled by log2(e)
    # pass 1: each segment's end state from a zero start
    h = _pick(x, i_j, i_s, 0, 0)
    for p in tl.static_range(1, SEG):
        h = _pick(a, i_j, i_s, p // S, p % S) * h + _pick(x, i_j, i_s, p // S, p % S)
    # the segment's decay from the sum of its steps: one exp2 per (state, segment) instead of a
    # running product (one FMUL per element)
    dts = tl.sum(tl.sum(tl.sum(tl.sum(dt, axis=5), axis=0), axis=2, keep_dims=True), axis=0, keep_dims=True)
    Pseg = tl.exp2(dts * A2q)
    start, carry = _segment_starts(Pseg, h, carry, i_q4, NPI, BD, NPL, Q)
    return pre, dt, dtu, a, x, Pseg, start, carry, tl.sum(dts, axis=3, keep_dims=True)


@triton.jit
def _tile_output(u, a, x, start, Ct, Dv, i_j, i_s, S: tl.constexpr, S2: tl.constexpr, HAS_D: tl.constexpr):
    # Pass 2: the exact states from each segment's start, gathered back into a 6-D tile for
    # y = sum_n C h (in-thread over the NPI states first, then across the NPL lanes), plus D u.
    SEG: tl.constexpr = S * S2
    h = start
    H = tl.zeros(Ct.shape, dtype=tl.float32)
    for p in tl.static_range(SEG):
        h = _pick(a, i_j, i_s, p // S, p % S) * h + _pick(x, i_j, i_s, p // S, p % S)
        H = _put(H, h, i_j, i_s, p // S, p % S)
    y = tl.sum(tl.sum(H * Ct, axis=1, keep_dims=True), axis=3, keep_dims=True)
    if HAS_D:
        y += Dv * u
    return y


@triton.jit
def _fwd_tile(u_ptr, dt_ptr, B_ptr, C_ptr, row, toff, t0, L, carry,
              A2, A2q, bias, Dv, i_j, i_n, i_s, i_q4, bc_rows, bc_nm, r_t,
              NPI: tl.constexpr, BD: tl.constexpr, NPL: tl.constexpr, Q: tl.constexpr,
              S: tl.constexpr, S2: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr,
              HAS_BIAS: tl.constexpr, EVEN_N: tl.constexpr, MASKED: tl.constexpr):
    u, pre, dt, dtu, Bt, a, x, Pseg, start, carry, dsum = _fwd_tile_states(
        u_ptr, dt_ptr, B_ptr, row, toff, t0, L, carry, A2, A2q, bias, i_j, i_n, i_s, i_q4,
        bc_rows, bc_nm, r_t, NPI, BD, NPL, Q, S, S2, SOFTPLUS, HAS_BIAS, EVEN_N, MASKED)
    Ct = _load_bc(C_ptr, bc_rows, bc_nm, r_t, t0, L, i_j, i_n, NPI, NPL, Q, S, S2, BD, MASKED, False, False)
    return _tile_output(u, a, x, start, Ct, Dv, i_j, i_s, S, S2, HAS_D), carry


@triton.jit
def _program_setup(A_ptr, D_ptr, bias_ptr, L, KD, G, N, K,
                   NPI: tl.constexpr, NPL: tl.constexpr, Q: tl.constexpr, S: tl.constexpr,
                   S2: tl.constexpr, BD: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr):
    # What every scan program loads and indexes before its first tile. ch4 ([1, BD, 1, 1], int64:
    # image * KD + channel) and n4 ([NPI, 1, NPL, 1]) address the per-(image, channel, state)
    # tables through _table (saved tile states, chunk carries); row_mask / ch_mask drop the
    # padded channels and states there.
    pid_d = tl.program_id(0)
    b = tl.program_id(1)
    i_j, i_d, i_l, i_q, i_s, d, dm, d_c, n, nm, n_c, grp, row, brow, toff = _index_setup(
        pid_d, b, L, KD, G, N, K, NPI, NPL, Q, S, S2, BD)
    i_q4 = tl.arange(0, Q)[None, None, None, :]
    A2 = tl.load(A_ptr + d_c * N + n_c, mask=nm, other=0.0) * 1.4426950408889634  # [1,NPI,BD,NPL,1,1]
    A2q = tl.sum(tl.sum(A2, axis=5), axis=0)
    bias = 0.0
    Dv = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d_c)
    if HAS_D:
        Dv = tl.load(D_ptr + d_c)
    i_n = tl.arange(0, NPI)[None, :, None, None, None, None]
    bc_rows, bc_nm, r_t = _bc_rows(pid_d, b, KD, G, N, K, L, NPI, NPL, Q, S, S2, BD)
    ch4 = tl.sum(tl.sum(tl.sum((b * KD + d_c).to(tl.int64), axis=5), axis=0), axis=0, keep_dims=True)
    n4 = tl.sum(tl.sum(n_c, axis=5), axis=0)
    row_mask = tl.sum(tl.sum((dm & nm).to(tl.int32), axis=5), axis=0) > 0
    ch_mask = tl.sum(tl.sum(tl.sum(dm.to(tl.int32), axis=5), axis=0), axis=0, keep_dims=True) > 0
    return (pid_d, b, i_j, i_n, i_s, i_q4, dm, nm, row, brow, toff, A2, A2q, bias, Dv,
            bc_rows, bc_nm, r_t, ch4, n4, row_mask, ch_mask)


@triton.jit
def _table(ptr, ch4, n4, n_rows, r, N):
    # Entry r of the channel's n_rows rows of N states: [NPI, BD, NPL, 1] pointers.
    return ptr + (ch4 * n_rows + r) * N + n4


@triton.jit
def _chunk_span(carry_ptr, ch4, n4, row_mask, L, N, n_chunks, chunk_tiles, T: tl.constexpr,
                NPI: tl.constexpr, BD: tl.constexpr, NPL: tl.constexpr, CHUNKED: tl.constexpr):
    # This program's share of L: its chunk c, whole tiles [first, stop), whether it also owns the
    # masked tail tile, and the value entering the chunk (the state, or in the backward the adjoint,
    # from the carry pass; zero without chunks).
    n_full = L // T
    if CHUNKED:
        c = tl.program_id(2)
        first = c * chunk_tiles
        stop = tl.minimum(first + chunk_tiles, n_full)
        last_chunk = c == n_chunks - 1
        carry = tl.load(_table(carry_ptr, ch4, n4, n_chunks, c, N), mask=row_mask, other=0.0)
    else:
        c = 0
        first = 0
        stop = n_full
        last_chunk = True
        carry = tl.zeros([NPI, BD, NPL, 1], dtype=tl.float32)
    return c, first, stop, last_chunk, carry, n_full


@triton.jit
def _selective_scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, st_ptr, carry_ptr,
    L, KD, G, N, K, n_tiles, n_chunks, chunk_tiles,
    NPI: tl.constexpr, NPL: tl.constexpr, Q: tl.constexpr, S: tl.constexpr, S2: tl.constexpr,
    BD: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
    STORE_STATES: tl.constexpr, EVEN_N: tl.constexpr, CHUNKED: tl.constexpr,
):
    """One program: BD channels of image program_id(1), the chunk program_id(2) of chunk_tiles
    tiles (all of L when not CHUNKED), started from its carry. L, KD, N, ... are runtime values
    (a new image size reuses the compiled kernel); the tile shape is constexpr."""
    T: tl.constexpr = Q * S * S2
    (pid_d, b, i_j, i_n, i_s, i_q4, dm, nm, row, brow, toff, A2, A2q, bias, Dv,
     bc_rows, bc_nm, r_t, ch4, n4, row_mask, _) = _program_setup(
        A_ptr, D_ptr, bias_ptr, L, KD, G, N, K, NPI, NPL, Q, S, S2, BD, HAS_D, HAS_BIAS)
    # EVEN_N: N is a power of two (>= NPL), so no padded states and no mask on the B loads.
    _, first, stop, last_chunk, carry, n_full = _chunk_span(
        carry_ptr, ch4, n4, row_mask, L, N, n_chunks, chunk_tiles, T, NPI, BD, NPL, CHUNKED)
    for tile in range(first, stop):
        t0 = tile * T
        if STORE_STATES:
            tl.store(_table(st_ptr, ch4, n4, n_tiles, tile, N), carry, mask=row_mask)
        y, carry = _fwd_tile(u_ptr, dt_ptr, B_ptr, C_ptr, row, toff, t0, L, carry,
                             A2, A2q, bias, Dv, i_j, i_n, i_s, i_q4, bc_rows, bc_nm, r_t, NPI, BD, NPL, Q, S, S2,
                             SOFTPLUS, HAS_D, HAS_BIAS, EVEN_N, False)
        tl.store(y_ptr + row + t0 + toff, y.to(y_ptr.dtype.element_ty), mask=dm)
    L_full = n_full * T
    if last_chunk and L_full < L:
        if STORE_STATES:
            tl.store(_table(st_ptr, ch4, n4, n_tiles, n_full, N), carry, mask=row_mask)
        y, carry = _fwd_tile(u_ptr, dt_ptr, B_ptr, C_ptr, row, toff, L_full, L, carry,
                             A2, A2q, bias, Dv, i_j, i_n, i_s, i_q4, bc_rows, bc_nm, r_t, NPI, BD, NPL, Q, S, S2,
                             SOFTPLUS, HAS_D, HAS_BIAS, EVEN_N, True)
        tl.store(y_ptr + row + L_full + toff, y.to(y_ptr.dtype.element_ty), mask=dm & (L_full + toff < L))


@triton.jit
def _summary_span(c, chunk_tiles, L, T: tl.constexpr, NPI: tl.constexpr, BD: tl.constexpr, NPL: tl.constexpr):
    # A chunk-summary program's whole tiles [first, stop) of chunk c, and its zero start state and dt sum.
    n_full = L // T
    first = c * chunk_tiles
    stop = tl.minimum(first + chunk_tiles, n_full)
    return (n_full, first, stop, tl.zeros([NPI, BD, NPL, 1], dtype=tl.float32),
            tl.zeros([1, BD, 1, 1], dtype=tl.float32))


@triton.jit
def _fwd_chunk_summary_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, bias_ptr, hend_ptr, dts_ptr,
    L, KD, G, N, K, n_chunks, chunk_tiles,
    NPI: tl.constexpr, NPL: tl.constexpr, Q: tl.constexpr, S: tl.constexpr, S2: tl.constexpr,
    BD: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_N: tl.constexpr,
):
    """Chunk pass 1: for BD channels of one image and the chunk program_id(2), the state leaving
    the chunk from a zero start (hend, [batch, KD, n_chunks, N]) and the chunk's sum of dt
    (dts, [batch, KD, n_chunks]). No C, no y."""
    T: tl.constexpr = Q * S * S2
    c = tl.program_id(2)
    (pid_d, b, i_j, i_n, i_s, i_q4, dm, nm, row, brow, toff, A2, A2q, bias, no_D,
     bc_rows, bc_nm, r_t, ch4, n4, row_mask, ch_mask) = _program_setup(
        A_ptr, A_ptr, bias_ptr, L, KD, G, N, K, NPI, NPL, Q, S, S2, BD, False, HAS_BIAS)
    n_full, first, stop, carry, dsum = _summary_span(c, chunk_tiles, L, T, NPI, BD, NPL)
    for tile in range(first, stop):
        u, pre, dt, dtu, Bt, a, x, Pseg, start, carry, ds = _fwd_tile_states(
            u_ptr, dt_ptr, B_ptr, row, toff, tile * T, L, carry, A2, A2q, bias, i_j, i_n, i_s, i_q4,
            bc_rows, bc_nm, r_t, NPI, BD, NPL, Q, S, S2, SOFTPLUS, HAS_BIAS, EVEN_N, False)
        dsum += ds
    if c == n_chunks - 1 and n_full * T < L:
        u, pre, dt, dtu, Bt, a, x, Pseg, start, carry, ds = _fwd_tile_states(
            u_ptr, dt_ptr, B_ptr, row, toff, n_full * T, L, carry, A2, A2q, bias, i_j, i_n, i_s, i_q4,
            bc_rows, bc_nm, r_t, NPI, BD, NPL, Q, S, S2, SOFTPLUS, HAS_BIAS, EVEN_N, True)
        dsum += ds
    tl.store(_table(hend_ptr, ch4, n4, n_chunks, c, N), carry, mask=row_mask)
    tl.store(dts_ptr + ch4 * n_chunks + c, dsum, mask=ch_mask)


@triton.jit
def _chunk_carry_kernel(hend_ptr, dts_ptr, A_ptr, total, KD, N, n_chunks,
                        REVERSE: tl.constexpr, BLOCK: tl.constexpr):
    """Chunk pass 2, over (image, channel, state) rows: replaces each chunk's local end value
    (hend, from a zero start) by the true value entering the chunk, walking the chunks in order
    (the forward state) or in reverse (the adjoint): carry_next = exp(A * sum dt) carry + local."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < total
    bd = i // N                     # image * KD + channel
    n = i - bd * N
    A2 = tl.load(A_ptr + (bd % KD) * N + n, mask=m, other=0.0) * 1.4426950408889634
    base = bd.to(tl.int64) * n_chunks
    carry = tl.zeros([BLOCK], dtype=tl.float32)
    for j in range(n_chunks):
        c = n_chunks - 1 - j if REVERSE else j
        loc = tl.load(hend_ptr + (base + c) * N + n, mask=m, other=0.0)
        dsum = tl.load(dts_ptr + base + c, mask=m, other=0.0)
        tl.store(hend_ptr + (base + c) * N + n, carry, mask=m)
        carry = tl.exp2(A2 * dsum) * carry + loc


# ----------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------


@triton.jit
def _bwd_tile(u_ptr, dt_ptr, B_ptr, C_ptr, dy_ptr, dB_ptr, dC_ptr,
              row, brow, toff, t0, L, h0, vcarry, dA_acc,
              A2, A2q, bias, Dv, i_j, i_n, i_s, i_q4, bc_rows, bc_nm, r_t, dm_dy, red_off, nm, dm,
              NPI: tl.constexpr, BD: tl.constexpr, NPL: tl.constexpr, Q: tl.constexpr,
              S: tl.constexpr, S2: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr,
              HAS_BIAS: tl.constexpr, EVEN_N: tl.constexpr, ONE_GROUP: tl.constexpr, MASKED: tl.constexpr):
    SEG: tl.constexpr = S * S2
    tt = t0 + toff
    # ---- forward recompute from the saved tile start h0 (the forward's two passes)
    u, pre, dt, dtu, Bt, a, x, Pseg, start, h_end, dsum = _fwd_tile_states(
        u_ptr, dt_ptr, B_ptr, row, toff, t0, L, h0, A2, A2q, bias, i_j, i_n, i_s, i_q4,
        bc_rows, bc_nm, r_t, NPI, BD, NPL, Q, S, S2, SOFTPLUS, HAS_BIAS, EVEN_N, MASKED)
    # padded channels get dy = 0, so they contribute nothing to dB and dC
    dy = _load_tile(dy_ptr, row + tt, tt, L, MASKED, dm_dy)
    hs = ()
    h = start
    H = tl.zeros(Bt.shape, dtype=tl.float32)
    for p in tl.static_range(SEG):
        h = _pick(a, i_j, i_s, p // S, p % S) * h + _pick(x, i_j, i_s, p // S, p % S)
        hs = hs + (h,)
        H = _put(H, h, i_j, i_s, p // S, p % S)
    # dC[k, n, t] = sum over the group's channels of dy_t h_t[n]
    dC6 = H * dy
    # ---- adjoint, backwards in time: g_p = C_p dy_p + a_{p+1} g_{p+1}
    Ct = _load_bc(C_ptr, bc_rows, bc_nm, r_t, t0, L, i_j, i_n, NPI, NPL, Q, S, S2, BD, MASKED, False, False)
    Qt = Ct * dy
    g = _pick(Qt, i_j, i_s, S2 - 1, S - 1)
    for p in tl.static_range(SEG - 2, -1, -1):
        g = _pick(Qt, i_j, i_s, p // S, p % S) + _pick(a, i_j, i_s, (p + 1) // S, (p + 1) % S) * g
    vloc = _pick(a, i_j, i_s, 0, 0) * g  # what the segment passes to the step before it (zero input)
    vin, vcarry = _segment_ends_reverse(Pseg, vloc, vcarry, i_q4, NPI, BD, NPL, Q)
    # ---- pass 2 of the adjoint with the true incoming adjoint, and the per-element gradients
    G6 = tl.zeros(Bt.shape, dtype=tl.float32)   # g
    M6 = tl.zeros(Bt.shape, dtype=tl.float32)   # g * a * h_{p-1} (= dL/d(dt*A) per state)
    g = vin
    for p in tl.static_range(SEG - 1, -1, -1):
        a_p = _pick(a, i_j, i_s, p // S, p % S)
        if p == SEG - 1:
            g = _pick(Qt, i_j, i_s, p // S, p % S) + g
        else:
            g = _pick(Qt, i_j, i_s, p // S, p % S) + _pick(a, i_j, i_s, (p + 1) // S, (p + 1) % S) * g
        if p == 0:
            hprev = start
        else:
            hprev = hs[p - 1]
        # a_p h_{p-1} is formed as a product, not as h_p - x_p, to avoid the cancellation
        m = g * (a_p * hprev)
        G6 = _put(G6, g, i_j, i_s, p // S, p % S)
        M6 = _put(M6, m, i_j, i_s, p // S, p % S)
    # dA[d, n] += sum_t g a h_{t-1} dt_t (kept per lane, summed over segments at the end)
    dA_acc += tl.sum(tl.sum(M6 * dt, axis=5), axis=0)
    dB6 = G6 * dtu
    gB = tl.sum(tl.sum(G6 * Bt, axis=1, keep_dims=True), axis=3, keep_dims=True)       # sum_n g B
    gA = tl.sum(tl.sum(M6 * A2, axis=1, keep_dims=True), axis=3, keep_dims=True) * 0.6931471805599453
    # dB, dC: reduce over this program's channels (one group) and add with float32 atomics
    if ONE_GROUP:
        dBr = tl.sum(dB6, axis=2, keep_dims=True)
        dCr = tl.sum(dC6, axis=2, keep_dims=True)
        if MASKED:
            tm = (tt < L) & (red_off >= 0)
            tl.atomic_add(dB_ptr + red_off + tt, dBr, mask=tm, sem="relaxed")
            tl.atomic_add(dC_ptr + red_off + tt, dCr, mask=tm, sem="relaxed")
        else:
            tl.atomic_add(dB_ptr + red_off + tt, dBr, sem="relaxed")
            tl.atomic_add(dC_ptr + red_off + tt, dCr, sem="relaxed")
    else:
        # channels of one program span groups (G not a multiple of BD): per-element atomics
        tm = (tt < L) & nm & dm
        tl.atomic_add(dB_ptr + brow + tt, dB6, mask=tm, sem="relaxed")
        tl.atomic_add(dC_ptr + brow + tt, dC6, mask=tm, sem="relaxed")
    du = dt * gB
    if HAS_D:
        du += Dv * dy
    ddt = u * gB + gA
    if SOFTPLUS:
        ddt = ddt * _sigmoid(pre)
    return du, ddt, dy * u, vcarry, dA_acc


@triton.jit
def _selective_scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dy_ptr, st_ptr, vin_ptr,
    du_ptr, ddt_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    L, KD, G, N, K, n_tiles, n_chunks, chunk_tiles,
    NPI: tl.constexpr, NPL: tl.constexpr, Q: tl.constexpr, S: tl.constexpr, S2: tl.constexpr,
    BD: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
    EVEN_N: tl.constexpr, ONE_GROUP: tl.constexpr, CHUNKED: tl.constexpr,
):
    """One program: BD channels of one image, the tiles of chunk program_id(2) (all of L when not
    CHUNKED) from the last to the first, started from the adjoint entering the chunk's end (vin).
    dA, dD, d(delta_bias) go to per-(image, chunk) rows summed by the launcher; dB and dC
    (float32, zero-initialised) receive atomic adds."""
    T: tl.constexpr = Q * S * S2
    (pid_d, b, i_j, i_n, i_s, i_q4, dm, nm, row, brow, toff, A2, A2q, bias, Dv,
     bc_rows, bc_nm, r_t, ch4, n4, row_mask, ch_mask) = _program_setup(
        A_ptr, D_ptr, bias_ptr, L, KD, G, N, K, NPI, NPL, Q, S, S2, BD, HAS_D, HAS_BIAS)
    dm_dy = None
    if not ONE_GROUP:
        dm_dy = dm
    # dB / dC row of the program's group after the reduction over its channels, [S2,NPI,1,NPL,1,1];
    # -1 marks padded states so the tail mask can drop them.
    n_c = tl.minimum(tl.arange(0, NPL)[None, None, None, :, None, None] * NPI + i_n, N - 1)
    grp0 = (pid_d * BD) // G
    red_off = ((b * K + grp0) * N + n_c).to(tl.int64) * L
    if not EVEN_N:
        red_off = tl.where(nm, red_off, -1)
    c, first, stop, last_chunk, vcarry, n_full = _chunk_span(
        vin_ptr, ch4, n4, row_mask, L, N, n_chunks, chunk_tiles, T, NPI, BD, NPL, CHUNKED)
    dA_acc = tl.zeros([NPI, BD, NPL, Q], dtype=tl.float32)
    dD_acc = tl.zeros([S2, 1, BD, 1, Q, S], dtype=tl.float32)   # per-(channel, step) partial sums
    db_acc = tl.zeros([S2, 1, BD, 1, Q, S], dtype=tl.float32)
    L_full = n_full * T
    if last_chunk and L_full < L:
        # the tail tile first (the adjoint starts at the end)
        h0 = tl.load(_table(st_ptr, ch4, n4, n_tiles, n_full, N), mask=row_mask, other=0.0)
        du, ddt, dDp, vcarry, dA_acc = _bwd_tile(
            u_ptr, dt_ptr, B_ptr, C_ptr, dy_ptr, dB_ptr, dC_ptr, row, brow, toff, L_full, L, h0,
            vcarry, dA_acc, A2, A2q, bias, Dv, i_j, i_n, i_s, i_q4, bc_rows, bc_nm, r_t, dm_dy, red_off, nm, dm,
            NPI, BD, NPL, Q, S, S2, SOFTPLUS, HAS_D, HAS_BIAS, EVEN_N, ONE_GROUP, True)
        om = dm & (L_full + toff < L)
        tl.store(du_ptr + row + L_full + toff, du.to(du_ptr.dtype.element_ty), mask=om)
        tl.store(ddt_ptr + row + L_full + toff, ddt.to(ddt_ptr.dtype.element_ty), mask=om)
        dD_acc += dDp
        db_acc += tl.where(L_full + toff < L, ddt, 0.0)
    for i in range(0, stop - first):
        tile = stop - 1 - i
        t0 = tile * T
        h0 = tl.load(_table(st_ptr, ch4, n4, n_tiles, tile, N), mask=row_mask, other=0.0)
        du, ddt, dDp, vcarry, dA_acc = _bwd_tile(
            u_ptr, dt_ptr, B_ptr, C_ptr, dy_ptr, dB_ptr, dC_ptr, row, brow, toff, t0, L, h0,
            vcarry, dA_acc, A2, A2q, bias, Dv, i_j, i_n, i_s, i_q4, bc_rows, bc_nm, r_t, dm_dy, red_off, nm, dm,
            NPI, BD, NPL, Q, S, S2, SOFTPLUS, HAS_D, HAS_BIAS, EVEN_N, ONE_GROUP, False)
        tl.store(du_ptr + row + t0 + toff, du.to(du_ptr.dtype.element_ty), mask=dm)
        tl.store(ddt_ptr + row + t0 + toff, ddt.to(ddt_ptr.dtype.element_ty), mask=dm)
        dD_acc += dDp
        db_acc += ddt
    # per-(image, chunk, channel) sums, written once; fixed reduction order (deterministic).
    # The tables are [batch, KD, n_chunks(, N)]: row c of the channel.
    tl.store(_table(dA_ptr, ch4, n4, n_chunks, c, N), tl.sum(dA_acc, axis=3, keep_dims=True), mask=row_mask)
    if HAS_D:
        dD = tl.reshape(tl.sum(tl.sum(tl.sum(dD_acc, axis=5), axis=4), axis=0), [1, BD, 1, 1])
        tl.store(dD_ptr + ch4 * n_chunks + c, dD, mask=ch_mask)
    if HAS_BIAS:
        dbias = tl.reshape(tl.sum(tl.sum(tl.sum(db_acc, axis=5), axis=4), axis=0), [1, BD, 1, 1])
        tl.store(dbias_ptr + ch4 * n_chunks + c, dbias, mask=ch_mask)


@triton.jit
def _bwd_tile_adjoint(dt_ptr, C_ptr, dy_ptr, row, toff, t0, L, vcarry, A2, A2q, bias,
                      i_j, i_n, i_s, i_q4, bc_rows, bc_nm, r_t, dm_dy,
                      NPI: tl.constexpr, BD: tl.constexpr, NPL: tl.constexpr, Q: tl.constexpr,
                      S: tl.constexpr, S2: tl.constexpr, SOFTPLUS: tl.constexpr,
                      HAS_BIAS: tl.constexpr, MASKED: tl.constexpr):
    # The adjoint part of _bwd_tile alone: the adjoint leaving the tile at its first step, and
    # the tile's sum of dt. Reads dt, dy and C only.
    SEG: tl.constexpr = S * S2
    tt = t0 + toff
    dt = _load_tile(dt_ptr, row + tt, tt, L, MASKED, None)
    if HAS_BIAS:
        dt = dt + bias
    if SOFTPLUS:
        dt = _softplus(dt)
    if MASKED:
        dt = tl.where(tt < L, dt, 0.0)
    dy = _load_tile(dy_ptr, row + tt, tt, L, MASKED, dm_dy)
    Ct = _load_bc(C_ptr, bc_rows, bc_nm, r_t, t0, L, i_j, i_n, NPI, NPL, Q, S, S2, BD, MASKED, False, False)
    Z = tl.join(dt, dy) * tl.join(tl.broadcast_to(A2, Ct.shape), Ct)
    dA2, Qt = tl.split(Z)
    a = tl.exp2(dA2)
    g = _pick(Qt, i_j, i_s, S2 - 1, S - 1)
    for p in tl.static_range(SEG - 2, -1, -1):
        g = _pick(Qt, i_j, i_s, p // S, p % S) + _pick(a, i_j, i_s, (p + 1) // S, (p + 1) % S) * g
    vloc = _pick(a, i_j, i_s, 0, 0) * g
    dts = tl.sum(tl.sum(tl.sum(tl.sum(dt, axis=5), axis=0), axis=2, keep_dims=True), axis=0, keep_dims=True)
    Pseg = tl.exp2(dts * A2q)
    _, vcarry = _segment_ends_reverse(Pseg, vloc, vcarry, i_q4, NPI, BD, NPL, Q)
    return vcarry, tl.sum(dts, axis=3, keep_dims=True)


@triton.jit
def _bwd_chunk_summary_kernel(
    dt_ptr, A_ptr, C_ptr, bias_ptr, dy_ptr, vend_ptr, dts_ptr,
    L, KD, G, N, K, n_chunks, chunk_tiles,
    NPI: tl.constexpr, NPL: tl.constexpr, Q: tl.constexpr, S: tl.constexpr, S2: tl.constexpr,
    BD: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_BIAS: tl.constexpr, ONE_GROUP: tl.constexpr,
):
    """Backward chunk pass 1: the adjoint leaving chunk program_id(2) at its first step when
    none enters at its end (vend, [batch, KD, n_chunks, N]), and the chunk's sum of dt."""
    T: tl.constexpr = Q * S * S2
    c = tl.program_id(2)
    (pid_d, b, i_j, i_n, i_s, i_q4, dm, nm, row, brow, toff, A2, A2q, bias, no_D,
     bc_rows, bc_nm, r_t, ch4, n4, row_mask, ch_mask) = _program_setup(
        A_ptr, A_ptr, bias_ptr, L, KD, G, N, K, NPI, NPL, Q, S, S2, BD, False, HAS_BIAS)
    dm_dy = None
    if not ONE_GROUP:
        dm_dy = dm
    n_full = L // T
    first = c * chunk_tiles
    stop = tl.minimum(first + chunk_tiles, n_full)
    vcarry = tl.zeros([NPI, BD, NPL, 1], dtype=tl.float32)
    dsum = tl.zeros([1, BD, 1, 1], dtype=tl.float32)
    if c == n_chunks - 1 and n_full * T < L:
        vcarry, ds = _bwd_tile_adjoint(dt_ptr, C_ptr, dy_ptr, row, toff, n_full * T, L, vcarry, A2, A2q, bias,
                                       i_j, i_n, i_s, i_q4, bc_rows, bc_nm, r_t, dm_dy,
                                       NPI, BD, NPL, Q, S, S2, SOFTPLUS, HAS_BIAS, True)
        dsum += ds
    for i in range(0, stop - first):
        vcarry, ds = _bwd_tile_adjoint(dt_ptr, C_ptr, dy_ptr, row, toff, (stop - 1 - i) * T, L, vcarry, A2, A2q,
                                       bias, i_j, i_n, i_s, i_q4, bc_rows, bc_nm, r_t, dm_dy,
                                       NPI, BD, NPL, Q, S, S2, SOFTPLUS, HAS_BIAS, False)
        dsum += ds
    tl.store(_table(vend_ptr, ch4, n4, n_chunks, c, N), vcarry, mask=row_mask)
    tl.store(dts_ptr + ch4 * n_chunks + c, dsum, mask=ch_mask)


# ----------------------------------------------------------------------------------------------
# Launchers and registration
# ----------------------------------------------------------------------------------------------


def _tile_config(N: int, tiles: Tiles) -> dict:
    """constexprs for a call: N padded to a power of two NP = NPI * NPL; BD channels per program."""
    NP = triton.next_power_of_2(N)
    npl = min(tiles.NPL, NP)
    lanes_d = 32 // (npl * tiles.Q)  # lanes left for channels once (states, segments) took theirs
    return dict(NPI=NP // npl, NPL=npl, Q=tiles.Q, S=tiles.S, S2=tiles.S2, BD=lanes_d * tiles.warps,
                EVEN_N=(NP == N))


def _tile_steps(tiles: Tiles) -> int:
    return tiles.Q * tiles.S * tiles.S2


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: any fixed number
    return torch.cuda.get_device_properties(device).multi_processor_count


def _chunking(batch: int, KD: int, L: int, tiles: Tiles, device: torch.device,
              programs_per_sm: int) -> tuple[int, int]:
    """(n_chunks, tiles per chunk) for a call. One image of a few thousand channels is only a few
    hundred programs, under one wave of the GPU at the occupancy these kernels run at: L is then cut
    into chunks, each a program, at the price of a summary pass (see "Chunks"). The split depends on
    the shape and the GPU's SM count only, so the forward's rounding is the same on every run."""
    n_tiles = triton.cdiv(L, _tile_steps(tiles))
    programs = triton.cdiv(KD, _tile_config(16, tiles)["BD"]) * batch
    want = programs_per_sm * _sm_count(device)
    n_chunks = max(1, min(triton.cdiv(want, programs), n_tiles // _MIN_CHUNK_TILES))
    per_chunk = triton.cdiv(n_tiles, n_chunks)
    return triton.cdiv(n_tiles, per_chunk), per_chunk


def _split(n_tiles: int, n_chunks: int) -> tuple[int, int]:
    # an explicit chunk count (0: automatic) rounded so that no chunk is empty
    per_chunk = triton.cdiv(n_tiles, max(1, min(n_chunks, n_tiles)))
    return triton.cdiv(n_tiles, per_chunk), per_chunk


def _tracing(t: torch.Tensor) -> bool:
    # Under FakeTensor tracing (torch.compile, opcheck, the triton_op's generated fake kernel),
    # wrap_triton records the launch of a compiled kernel into the graph, but the interpreter's
    # InterpretedFunction (TRITON_INTERPRET=1) would run and try to copy fake storages: skip the
    # launch there only. On a GPU the launch must stay, or a traced graph would contain no kernel.
    return os.environ.get("TRITON_INTERPRET") == "1" and torch._subclasses.fake_tensor.is_fake(t)


def _opt(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    # Triton needs a pointer even for an absent D / delta_bias; the HAS_* constexpr keeps it unread.
    return like if t is None else t


def _unused(like: torch.Tensor) -> torch.Tensor:
    # A pointer for a table a launch leaves untouched (no chunks, no saved states). Never an output
    # of the same launch: under torch.compile the launch is functionalised, each argument it may
    # write cloned separately, and an output passed twice came back as its other, unwritten clone
    # (NaN from opcheck's AOT check on the H200, 2026-11-30).
    return like.new_empty(1, dtype=torch.float32)


@torch.library.triton_op("mambaic::selective_scan_fwd_triton", mutates_args=())
def selective_scan_fwd_triton(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, delta_bias: torch.Tensor | None, delta_softplus: bool, store_states: bool,
    n_chunks: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """y, and (when store_states) each tile's incoming state (batch, KD, n_tiles, N) for the
    backward. L is cut into n_chunks chunks (1: one pass; rounded so that no chunk is empty)."""
    batch, KD, L = u.shape
    K, N = B.shape[1], A.shape[1]
    cfg = _tile_config(N, _FWD_TILES)
    y = torch.empty_like(u)
    n_tiles = triton.cdiv(L, _tile_steps(_FWD_TILES))
    n_chunks, per_chunk = _split(n_tiles, n_chunks)
    states = u.new_empty((batch, KD, n_tiles, N) if store_states else (0,), dtype=torch.float32)
    grid = (triton.cdiv(KD, cfg["BD"]), batch, n_chunks)
    if _tracing(u):
        return y, states
    flags = dict(SOFTPLUS=delta_softplus, HAS_BIAS=delta_bias is not None)
    carries = _unused(u)
    if n_chunks > 1:
        carries = u.new_empty((batch, KD, n_chunks, N), dtype=torch.float32)
        dsums = u.new_empty((batch, KD, n_chunks), dtype=torch.float32)
        torch.library.wrap_triton(_fwd_chunk_summary_kernel)[grid](
            u, delta, A, B, _opt(delta_bias, A), carries, dsums,
            L, KD, KD // K, N, K, n_chunks, per_chunk, num_warps=_FWD_TILES.warps, **flags, **cfg)
        _carry_chunks(carries, dsums, A, reverse=False)
    torch.library.wrap_triton(_selective_scan_fwd_kernel)[grid](
        u, delta, A, B, C, _opt(D, A), _opt(delta_bias, A), y, states if store_states else _unused(u), carries,
        L, KD, KD // K, N, K, n_tiles, n_chunks, per_chunk,
        HAS_D=D is not None, STORE_STATES=store_states, CHUNKED=n_chunks > 1,
        num_warps=_FWD_TILES.warps, **flags, **cfg,
    )
    return y, states


def _carry_chunks(table: torch.Tensor, dsums: torch.Tensor, A: torch.Tensor, reverse: bool) -> None:
    rows = table.shape[0] * table.shape[1] * table.shape[3]
    block = 128
    torch.library.wrap_triton(_chunk_carry_kernel)[(triton.cdiv(rows, block),)](
        table, dsums, A, rows, table.shape[1], table.shape[3], table.shape[2],
        REVERSE=reverse, BLOCK=block, num_warps=4)


@torch.library.triton_op("mambaic::selective_scan_bwd_triton", mutates_args=())
def selective_scan_bwd_triton(
    dy: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
    C: torch.Tensor, D: torch.Tensor | None, delta_bias: torch.Tensor | None, delta_softplus: bool,
    states: torch.Tensor, n_chunks: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(du, ddelta, dA, dB, dC, dD, ddelta_bias); dD / ddelta_bias are empty when D / delta_bias are
    None. states: the forward's, whose tiles must be those of _BWD_TILES (the launcher checks)."""
    batch, KD, L = u.shape
    K, N = B.shape[1], A.shape[1]
    G = KD // K
    cfg = _tile_config(N, _BWD_TILES)
    n_tiles = triton.cdiv(L, _tile_steps(_BWD_TILES))
    if states.shape != (batch, KD, n_tiles, N):
        raise RuntimeError(f"selective_scan_bwd_triton: states of shape {tuple(states.shape)}, expected "
                           f"{(batch, KD, n_tiles, N)}: the forward and backward tiles differ")
    n_chunks, per_chunk = _split(n_tiles, n_chunks)
    dy = dy.contiguous()
    du = torch.empty_like(u)
    ddelta = torch.empty_like(delta)
    dA_part = u.new_empty((batch, KD, n_chunks, N), dtype=torch.float32)
    dB = torch.zeros(B.shape, device=u.device, dtype=torch.float32)
    dC = torch.zeros(C.shape, device=u.device, dtype=torch.float32)
    dD_part = u.new_empty((batch, KD, n_chunks), dtype=torch.float32)
    db_part = u.new_empty((batch, KD, n_chunks), dtype=torch.float32)
    grid = (triton.cdiv(KD, cfg["BD"]), batch, n_chunks)
    one_group = G % cfg["BD"] == 0  # every program's channels lie in one group
    flags = dict(SOFTPLUS=delta_softplus, HAS_BIAS=delta_bias is not None, ONE_GROUP=one_group)
    if not _tracing(u):
        vin = _unused(u)
        if n_chunks > 1:
            vin = u.new_empty((batch, KD, n_chunks, N), dtype=torch.float32)
            dsums = u.new_empty((batch, KD, n_chunks), dtype=torch.float32)
            torch.library.wrap_triton(_bwd_chunk_summary_kernel)[grid](
                delta, A, C, _opt(delta_bias, A), dy, vin, dsums,
                L, KD, G, N, K, n_chunks, per_chunk, num_warps=_BWD_TILES.warps, **flags,
                **{k: v for k, v in cfg.items() if k != "EVEN_N"})
            _carry_chunks(vin, dsums, A, reverse=True)
        torch.library.wrap_triton(_selective_scan_bwd_kernel)[grid](
            u, delta, A, B, C, _opt(D, A), _opt(delta_bias, A), dy, states, vin,
            du, ddelta, dA_part, dB, dC, dD_part, db_part,
            L, KD, G, N, K, n_tiles, n_chunks, per_chunk,
            HAS_D=D is not None, CHUNKED=n_chunks > 1, num_warps=_BWD_TILES.warps, **flags, **cfg,
        )
    dD = dD_part.sum((0, 2)) if D is not None else dD_part.new_empty(0)
    dbias = db_part.sum((0, 2)) if delta_bias is not None else db_part.new_empty(0)
    return du, ddelta, dA_part.sum((0, 2)), dB.to(B.dtype), dC.to(C.dtype), dD, dbias


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, delta_bias, delta_softplus, store_states, n_chunks = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, output[1])
    ctx.delta_softplus = delta_softplus


def _backward(ctx, dy, dstates):
    u, delta, A, B, C, D, delta_bias, states = ctx.saved_tensors
    du, ddelta, dA, dB, dC, dD, dbias = selective_scan_bwd_triton(
        dy, u, delta, A, B, C, D, delta_bias, ctx.delta_softplus, states,
        _chunking(u.shape[0], u.shape[1], u.shape[2], _BWD_TILES, u.device, _BWD_PROGRAMS_PER_SM)[0])
    return (du, ddelta, dA, dB, dC, dD if D is not None else None,
            dbias if delta_bias is not None else None, None, None, None)


torch.library.register_autograd("mambaic::selective_scan_fwd_triton", _backward, setup_context=_setup_context)


def selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus):
    """The backend entry point registered with _backend (arguments already checked)."""
    A32 = A.float().contiguous()
    D32 = None if D is None else D.float().contiguous()
    bias32 = None if delta_bias is None else delta_bias.float().contiguous()
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, delta_bias))
    batch, KD, L = u.shape
    n_chunks, _ = _chunking(batch, KD, L, _FWD_TILES, u.device, _FWD_PROGRAMS_PER_SM)
    y, _ = torch.ops.mambaic.selective_scan_fwd_triton(
        u, delta, A32, B, C, D32, bias32, bool(delta_softplus), needs_grad, n_chunks)
    return y


def _supports(device: str, dtype: torch.dtype, d_state: int, **_) -> str | None:
    reason = supports_device(device, dtype)
    if reason is not None:
        return reason
    if d_state > _MAX_N:
        return (f"the triton selective_scan keeps d_state <= {_MAX_N} states per channel in registers, "
                f"got d_state={d_state}")
    return None


_backend.register("selective_scan", "triton", selective_scan, _supports)
