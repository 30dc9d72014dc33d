"""Triton cross_scan / cross_merge: tile-transposes through registers, one read and four writes.

Algorithm. Each program owns a (BLOCK_C, BLOCK_H, BLOCK_W) tile of the map: channels x rows x
columns (channels-first calls use BLOCK_C = 1: one plane per program). With L = H*W and p = h*W + w
the row-major position, q = w*H + h the column-major one:

    cross_scan   out[:, 0, c, p] = x[c, h, w]        out[:, 2, c, L-1-p] = x[c, h, w]
                 out[:, 1, c, q] = x[c, h, w]        out[:, 3, c, L-1-q] = x[c, h, w]
    cross_merge  out[c, p] = y0[c, p] + y1[c, q] + y2[c, L-1-p] + y3[c, L-1-q]

so each program reads its tile once (cross_scan) or four times (cross_merge, one tile per
direction) and writes four tiles (cross_scan) or one (cross_merge). Every global access is a
contiguous run along the fastest axis of its own tensor:

- directions 0 / 2 run along w, directions 1 / 3 along h: the column-major half goes through a
  register transpose of the tile (``tl.permute``; Triton stages it through shared memory, ~8 KiB
  per program for fp32, far below the DRAM time of the tile);
- the reversed directions 2 / 3 are stored (or loaded) at *ascending* addresses: the tile's fast
  axis is split into groups of V elements (V = 16 bytes, one vector access), the groups are
  placed in reverse order by the address arithmetic and the V elements inside a group are
  reversed in registers by `_flip_groups` (split/join: register renames, no shuffles), so these
  accesses stay 16-byte vectors like the plain ones (checked in the sm_90 PTX of Triton 3.6 and
  3.8: every global access of both kernels is a v4 load or store when W and H are multiples of
  16 - Triton's divisibility specialisation; other sizes fall back to narrower accesses);
- channels-last maps are read (cross_scan) or written (cross_merge) along C, the sequences along
  L: the tile is transposed between the two through registers as well.

Minimum traffic (what the benchmark divides by), with E = B*C*H*W elements of the map:
    cross_scan   reads E, writes 4E  -> 5 * E * itemsize bytes
    cross_merge  reads 4E, writes E  -> 5 * E * itemsize bytes
which is what these kernels move: nothing is read twice, no temporaries.

cross_merge is the adjoint of cross_scan (and the other way round), so each op's backward is the
other op's kernel: `cross_scan_bwd_triton` runs the merge kernel, `cross_merge_bwd_triton` the
scan kernel. Both forwards are pure index maps plus a 4-term sum in a fixed order, so they are
bit-identical from run to run. Image sizes and channel counts are runtime arguments: a new H, W
or C reuses the compiled kernel (Triton only specialises integer arguments on divisibility by 16,
which selects vectorised accesses, so at most a few variants exist per dtype and layout).

Registration: four triton_ops launched through wrap_triton, mambaic::cross_{scan,merge}_fwd_triton
joined to their _bwd_triton ops by register_autograd. Eager calls that need no gradient skip
the custom-op dispatcher (`direct_launch_ok`): its ~15 us of CPU per call matters for the small
maps of the model.
"""

import os

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton
from torch._guards import detect_fake_mode

from .. import _backend
from .._backend import direct_launch_ok
from . import supports_device


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _flip_groups(t, D0: tl.constexpr, D1: tl.constexpr, G: tl.constexpr, V: tl.constexpr):
    """Reverse the last axis (size V, a power of two <= 8) of a (D0, D1, G, V) tile.

    Only split/join: the V elements of a group sit in one thread (they are one vector access), so
    this compiles to register renames (checked in the PTX for sm_90: no shuffles, no shared
    memory). Element V-1-i has every bit of i complemented: each split peels one bit off the last
    axis and the joins put the halves back in swapped order. (``tl.flip`` does the same with
    xor-reductions that compile to warp shuffles.)
    """
    if V == 1:
        r = t
    elif V == 2:
        lo, hi = tl.split(t)
        r = tl.join(hi, lo)
    elif V == 4:
        a, b = tl.split(tl.reshape(t, (D0, D1, G, 2, 2)))  # a[u] = t[2u], b[u] = t[2u + 1]
        a0, a1 = tl.split(a)  # t[0], t[2]
        b0, b1 = tl.split(b)  # t[1], t[3]
        # r[2u + v] = t[3 - 2u - v]: join(P, Q)[u, v] = (P, Q)[v][u] with P = (t3, t1), Q = (t2, t0)
        r = tl.reshape(tl.join(tl.join(b1, b0), tl.join(a1, a0)), (D0, D1, G, 4))
    else:
        tl.static_assert(V == 8, "_flip_groups handles groups of 1, 2, 4 or 8 elements")
        # index i = 4u + 2v + w; each split peels the lowest remaining bit. Names give the source
        # element: a = (w=0), b = (w=1); then v, then u, e.g. b10 = t[4*0 + 2*1 + 1] = t[3].
        a, b = tl.split(tl.reshape(t, (D0, D1, G, 2, 2, 2)))
        a0, a1 = tl.split(a)
        b0, b1 = tl.split(b)
        a00, a01 = tl.split(a0)  # t[0], t[4]
        a10, a11 = tl.split(a1)  # t[2], t[6]
        b00, b01 = tl.split(b0)  # t[1], t[5]
        b10, b11 = tl.split(b1)  # t[3], t[7]
        # r[i] = t[7 - i]; built innermost-u first: r[u, v=0, w=0] = (t7, t3), ... (see V == 4)
        r = tl.join(
            tl.join(tl.join(b11, b10), tl.join(b01, b00)),
            tl.join(tl.join(a11, a10), tl.join(a01, a00)),
        )
        r = tl.reshape(r, (D0, D1, G, 8))
    return r


@triton.jit
def _tile_coords(pid, C, H, W, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
                 CHANNEL_LAST: tl.constexpr):
    """(batch, c0, h0, w0) of this program's tile.

    Programs that run together should touch neighbouring memory: channels-first walks the tiles of
    one plane in row-major order (w fastest); channels-last walks the channel tiles of one
    position block first, because C is the contiguous axis of the map there.
    """
    n_tc = tl.cdiv(C, BLOCK_C)
    n_th = tl.cdiv(H, BLOCK_H)
    n_tw = tl.cdiv(W, BLOCK_W)
    if CHANNEL_LAST:
        tc = pid % n_tc
        rest = pid // n_tc
        tw = rest % n_tw
        rest = rest // n_tw
        th = rest % n_th
        b = rest // n_th
    else:
        tw = pid % n_tw
        rest = pid // n_tw
        th = rest % n_th
        rest = rest // n_th
        tc = rest % n_tc
        b = rest // n_tc
    return b, tc * BLOCK_C, th * BLOCK_H, tw * BLOCK_W


@triton.jit
def _cross_scan_kernel(
    x,  # (B, C, H, W) or (B, H, W, C), contiguous
    out,  # (B, 4, C, L), contiguous
    C, H, W,  # runtime sizes: a new image size reuses the compiled kernel
    BLOCK_C: tl.constexpr,  # channels per tile (1 for channels-first: one plane per program)
    BLOCK_H: tl.constexpr,  # rows per tile; a multiple of V (the transposed half groups rows)
    BLOCK_W: tl.constexpr,  # columns per tile; a multiple of V
    V: tl.constexpr,  # elements per 16-byte vector: the reversal granule
    CHANNEL_LAST: tl.constexpr,
):
    pid = tl.program_id(0)
    b, c0, h0, w0 = _tile_coords(pid, C, H, W, BLOCK_C, BLOCK_H, BLOCK_W, CHANNEL_LAST)
    L = H * W

    # ---- Phase 1: read the tile once, (BLOCK_C, BLOCK_H, BLOCK_W), coalesced along the map's
    # fast axis (w for channels-first, c for channels-last).
    c = c0 + tl.arange(0, BLOCK_C)[:, None, None]
    h = h0 + tl.arange(0, BLOCK_H)[None, :, None]
    w = w0 + tl.arange(0, BLOCK_W)[None, None, :]
    in_map = (c < C) & (h < H) & (w < W)
    if CHANNEL_LAST:
        src = x + ((b * H + h) * W + w).to(tl.int64) * C + c
    else:
        src = x + (b * C + c).to(tl.int64) * L + (h * W + w)
    tile = tl.load(src, mask=in_map)

    # Row (b, k, c) of the output starts at ((b*4 + k)*C + c) * L, in int64: B*4*C*L passes 2^31
    # at the benchmark shape once B >= 2. Positions inside a row stay int32 (L < 2^31).
    G_W: tl.constexpr = BLOCK_W // V
    G_H: tl.constexpr = BLOCK_H // V
    # The stores below work on 4-D views (c, row, group, element-in-group) of the tile. They are
    # kept 4-D (no flattening of c into the rows) so that Triton converts the transposed view to
    # its store layout once and the reversal reuses it (a flattening reshape made it convert twice).
    c = c0 + tl.arange(0, BLOCK_C)[:, None, None, None]
    e = tl.arange(0, V)[None, None, None, :]  # position inside a 16-byte group

    # ---- Phase 2: directions 0 and 2, rows (c, h) along w in groups of V.
    rh = h0 + tl.arange(0, BLOCK_H)[None, :, None, None]
    g = tl.arange(0, G_W)[None, None, :, None]
    row_ok = (c < C) & (rh < H)
    rows = tl.reshape(tile, (BLOCK_C, BLOCK_H, G_W, V))
    pos = rh * W + w0 + g * V + e  # row-major position p
    tl.store(out + ((b * 4 + 0) * C + c).to(tl.int64) * L + pos, rows, mask=row_ok & (w0 + g * V + e < W))
    # Direction 2 at L-1-p: group g of the row lands, reversed, on the V ascending addresses
    # starting at L - V - (h*W + w0 + g*V). The mask is written as a bound on that address
    # (>= the row's first reversed slot) rather than on the source column, so Triton sees it
    # constant over each group and keeps the store vectorised.
    rev = L - V - rh * W - w0 - g * V + e
    tl.store(out + ((b * 4 + 2) * C + c).to(tl.int64) * L + rev, _flip_groups(rows, BLOCK_C, BLOCK_H, G_W, V),
             mask=row_ok & (rev >= L - (rh + 1) * W))

    # ---- Phase 3: directions 1 and 3, the tile transposed to rows (c, w) along h in groups of V.
    # One permute serves both: (c, h/V, V, w) -> (c, w, h/V, V).
    cols = tl.permute(tl.reshape(tile, (BLOCK_C, G_H, V, BLOCK_W)), (0, 3, 1, 2))
    rw = w0 + tl.arange(0, BLOCK_W)[None, :, None, None]
    g = tl.arange(0, G_H)[None, None, :, None]
    col_ok = (c < C) & (rw < W)
    pos = rw * H + h0 + g * V + e  # column-major position q
    tl.store(out + ((b * 4 + 1) * C + c).to(tl.int64) * L + pos, cols, mask=col_ok & (h0 + g * V + e < H))
    rev = L - V - rw * H - h0 - g * V + e  # direction 3 at L-1-q, as for direction 2
    tl.store(out + ((b * 4 + 3) * C + c).to(tl.int64) * L + rev, _flip_groups(cols, BLOCK_C, BLOCK_W, G_H, V),
             mask=col_ok & (rev >= L - (rw + 1) * H))


@triton.jit
def _cross_merge_kernel(
    y,  # (B, 4, C, L), contiguous; y[:, k] in direction k's scan order
    out,  # (B, C, L) or, channels-last, (B, L, C); contiguous
    C, H, W,  # runtime sizes
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    V: tl.constexpr,  # elements per 16-byte vector: the reversal granule
    CHANNEL_LAST: tl.constexpr,
):
    pid = tl.program_id(0)
    b, c0, h0, w0 = _tile_coords(pid, C, H, W, BLOCK_C, BLOCK_H, BLOCK_W, CHANNEL_LAST)
    L = H * W
    G_W: tl.constexpr = BLOCK_W // V
    G_H: tl.constexpr = BLOCK_H // V
    c = c0 + tl.arange(0, BLOCK_C)[:, None, None, None]  # 4-D views as in _cross_scan_kernel
    e = tl.arange(0, V)[None, None, None, :]

    # ---- Phase 1: directions 0 and 2, read as rows (c, h) along w (direction 2 at ascending
    # addresses, then reversed per group in registers: see _cross_scan_kernel). Masked lanes are
    # never stored, so the loads need no `other`.
    rh = h0 + tl.arange(0, BLOCK_H)[None, :, None, None]
    g = tl.arange(0, G_W)[None, None, :, None]
    row_ok = (c < C) & (rh < H)
    pos = rh * W + w0 + g * V + e
    y0 = tl.load(y + ((b * 4 + 0) * C + c).to(tl.int64) * L + pos, mask=row_ok & (w0 + g * V + e < W))
    rev = L - V - rh * W - w0 - g * V + e
    y2 = tl.load(y + ((b * 4 + 2) * C + c).to(tl.int64) * L + rev, mask=row_ok & (rev >= L - (rh + 1) * W))
    # The four terms are summed in float32 in one fixed order, (y0 + y2) + (y1 + y3), and rounded
    # once: half-precision outputs carry a single rounding, and the result is reproducible.
    acc = y0.to(tl.float32) + _flip_groups(y2, BLOCK_C, BLOCK_H, G_W, V).to(tl.float32)

    # ---- Phase 2: directions 1 and 3, read as rows (c, w) along h, summed, then transposed back
    # to (c, h, w) in registers. (Triton 3.8 stages this through shared memory twice: it converts
    # acc to the permute's layout and the sum back for the store. Loading y1 / y3 directly in the
    # output orientation avoids that but makes each warp touch 32 rows of y per access; the
    # shared-memory traffic is the cheaper of the two.)
    rw = w0 + tl.arange(0, BLOCK_W)[None, :, None, None]
    g = tl.arange(0, G_H)[None, None, :, None]
    col_ok = (c < C) & (rw < W)
    pos = rw * H + h0 + g * V + e
    y1 = tl.load(y + ((b * 4 + 1) * C + c).to(tl.int64) * L + pos, mask=col_ok & (h0 + g * V + e < H))
    rev = L - V - rw * H - h0 - g * V + e
    y3 = tl.load(y + ((b * 4 + 3) * C + c).to(tl.int64) * L + rev, mask=col_ok & (rev >= L - (rw + 1) * H))
    cols = y1.to(tl.float32) + _flip_groups(y3, BLOCK_C, BLOCK_W, G_H, V).to(tl.float32)
    cols = tl.reshape(tl.permute(cols, (0, 2, 3, 1)), (BLOCK_C, BLOCK_H, G_W, V))
    acc = acc + cols

    # ---- Phase 3: one write of the merged tile, along w (channels-first) or c (channels-last).
    w = w0 + tl.arange(0, G_W)[None, None, :, None] * V + e
    if CHANNEL_LAST:
        dst = out + ((b * H + rh) * W + w).to(tl.int64) * C + c
    else:
        dst = out + (b * C + c).to(tl.int64) * L + (rh * W + w)
    tl.store(dst, acc.to(out.dtype.element_ty), mask=row_ok & (w < W))


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------

# Tile shapes (BLOCK_C, BLOCK_H, BLOCK_W, num_warps) by (layout, bytes per element).
# Channels-first: one plane per program; 32x64 fp32 (8 KiB read, 32 KiB written) keeps ~8 KiB of
# shared memory for the transpose, so many programs fit on an SM and enough loads are in flight
# to cover DRAM latency; runs along h (directions 1/3) are BLOCK_H elements = 128 bytes.
# Half precision doubles BLOCK_H so those runs stay 128 bytes.
# Channels-last: 16 channels x 16 x 16 positions, so the map is read in 64-byte runs along C
# and the sequences written in 64-byte runs along w / h.
# `bench` sweeps alternatives through the `config` argument of the launchers. The fp32
# channels-first tile is the sweep's best on an H100 (2026-11-25, bench/RESULTS.md): 16 x 128 ran
# the scan at 1421 GB/s and the merge at 2653 GB/s, against 1198 / 2413 for 32 x 64.
_CONFIGS = {
    (False, 4): (1, 16, 128, 4),
    (False, 2): (1, 64, 64, 4),
    (True, 4): (16, 16, 16, 4),
    (True, 2): (32, 16, 16, 8),
}


def _launch(kernel, src, dst, C, H, W, batch, channel_last, config=None, traceable=True):
    """Run `kernel` (scan or merge) over the map of batch x C x H x W; grid = one program per tile."""
    if dst.numel() == 0:
        return
    block_c, block_h, block_w, num_warps = config or _CONFIGS[(channel_last, src.element_size())]
    vec = 16 // src.element_size()  # one 16-byte vector; tiles are multiples of it
    assert block_h % vec == 0 and block_w % vec == 0, "tile sides must be multiples of the vector width"
    # Plain integer arithmetic: triton.cdiv goes through Triton's JIT call path (~4 us a call).
    grid = (batch * -(-C // block_c) * -(-H // block_h) * -(-W // block_w),)
    launch(kernel, traceable)[grid](
        src, dst, C, H, W,
        BLOCK_C=block_c, BLOCK_H=block_h, BLOCK_W=block_w, V=vec, CHANNEL_LAST=channel_last,
        num_warps=num_warps,
    )


def launch(kernel, traceable=True):
    """The kernel to index with a grid: wrapped by wrap_triton inside the ops, so that torch.compile
    and export see the launch; bare on the direct eager path.

    Under TRITON_INTERPRET=1 the kernel is an InterpretedFunction, which runs eagerly whatever
    wraps it (older torch releases refuse to wrap it at all), and which cannot run on the fake
    tensors that torch uses to infer the ops' output shapes: there the launch is skipped.
    """
    if os.environ.get("TRITON_INTERPRET") == "1":
        return _NoLaunch() if detect_fake_mode() is not None else kernel
    return wrap_triton(kernel) if traceable else kernel


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def scan_into(x: torch.Tensor, out: torch.Tensor, channel_last: bool, config=None, traceable=True) -> None:
    """cross_scan of contiguous x into contiguous out (batch, 4, C, L); for benchmarks and the ops."""
    if channel_last:
        batch, H, W, C = x.shape
    else:
        batch, C, H, W = x.shape
    _launch(_cross_scan_kernel, x, out, C, H, W, batch, channel_last, config, traceable)


def merge_into(y: torch.Tensor, out: torch.Tensor, channel_last: bool, config=None, traceable=True) -> None:
    """cross_merge of contiguous y (batch, 4, C, H, W) into contiguous out (batch, C, L) or (batch, L, C)."""
    batch, _, C, H, W = y.shape
    _launch(_cross_merge_kernel, y, out, C, H, W, batch, channel_last, config, traceable)


# --------------------------------------------------------------------------------------------
# Ops: mambaic::cross_{scan,merge}_{fwd,bwd}_triton, autograd, registration
# --------------------------------------------------------------------------------------------


def _scan(x, channel_last, traceable=True):
    if channel_last:
        batch, H, W, C = x.shape
    else:
        batch, C, H, W = x.shape
    out = torch.empty((batch, 4, C, H * W), dtype=x.dtype, device=x.device)
    scan_into(x, out, channel_last, traceable=traceable)
    return out


def _merge(y, channel_last, traceable=True):
    batch, _, C, H, W = y.shape
    shape = (batch, H * W, C) if channel_last else (batch, C, H * W)
    out = torch.empty(shape, dtype=y.dtype, device=y.device)
    merge_into(y, out, channel_last, traceable=traceable)
    return out


@triton_op("mambaic::cross_scan_fwd_triton", mutates_args=())
def cross_scan_fwd(x: torch.Tensor, channel_last: bool) -> torch.Tensor:
    """(batch, C, H, W) or (batch, H, W, C) -> (batch, 4, C, H*W)."""
    return _scan(x, channel_last)


@triton_op("mambaic::cross_scan_bwd_triton", mutates_args=())
def cross_scan_bwd(grad: torch.Tensor, H: int, W: int, channel_last: bool) -> torch.Tensor:
    """(batch, 4, C, L) -> d x, in x's layout: the merge kernel (cross_merge is cross_scan's adjoint)."""
    batch, _, C, _ = grad.shape
    shape = (batch, H, W, C) if channel_last else (batch, C, H, W)
    dx = torch.empty(shape, dtype=grad.dtype, device=grad.device)
    merge_into(grad.view(batch, 4, C, H, W), dx, channel_last)
    return dx


@triton_op("mambaic::cross_merge_fwd_triton", mutates_args=())
def cross_merge_fwd(y: torch.Tensor, channel_last: bool) -> torch.Tensor:
    """(batch, 4, C, H, W) -> (batch, C, H*W), or (batch, H*W, C) with channel_last."""
    return _merge(y, channel_last)


@triton_op("mambaic::cross_merge_bwd_triton", mutates_args=())
def cross_merge_bwd(grad: torch.Tensor, H: int, W: int, channel_last: bool) -> torch.Tensor:
    """(batch, C, L) or (batch, L, C) -> d y (batch, 4, C, H, W): the scan kernel."""
    if channel_last:
        batch, _, C = grad.shape
        src = grad.view(batch, H, W, C)
    else:
        batch, C, _ = grad.shape
        src = grad.view(batch, C, H, W)
    dy = torch.empty((batch, 4, C, H, W), dtype=grad.dtype, device=grad.device)
    scan_into(src, dy, channel_last)
    return dy


def _scan_setup_context(ctx, inputs, output):
    x, channel_last = inputs
    ctx.channel_last = channel_last
    ctx.hw = tuple(x.shape[1:3]) if channel_last else tuple(x.shape[2:4])


def _scan_backward(ctx, grad):
    H, W = ctx.hw
    # Autograd may hand over a non-contiguous gradient (e.g. from a permute downstream).
    return torch.ops.mambaic.cross_scan_bwd_triton(grad.contiguous(), H, W, ctx.channel_last), None


def _merge_setup_context(ctx, inputs, output):
    y, channel_last = inputs
    ctx.channel_last = channel_last
    ctx.hw = tuple(y.shape[3:5])


def _merge_backward(ctx, grad):
    H, W = ctx.hw
    return torch.ops.mambaic.cross_merge_bwd_triton(grad.contiguous(), H, W, ctx.channel_last), None


torch.library.register_autograd("mambaic::cross_scan_fwd_triton", _scan_backward, setup_context=_scan_setup_context)
torch.library.register_autograd("mambaic::cross_merge_fwd_triton", _merge_backward, setup_context=_merge_setup_context)


def cross_scan(x: torch.Tensor, channel_last: bool) -> torch.Tensor:
    if direct_launch_ok(x):
        return _scan(x, channel_last, traceable=False)
    return torch.ops.mambaic.cross_scan_fwd_triton(x, channel_last)


def cross_merge(y: torch.Tensor, channel_last: bool) -> torch.Tensor:
    if direct_launch_ok(y):
        return _merge(y, channel_last, traceable=False)
    return torch.ops.mambaic.cross_merge_fwd_triton(y, channel_last)


def _supports(device, dtype, **meta):
    return supports_device(device, dtype)


_backend.register("cross_scan", "triton", cross_scan, _supports)
_backend.register("cross_merge", "triton", cross_merge, _supports)
