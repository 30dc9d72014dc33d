"""Triton window attention: one fused kernel per direction, one program per (window, head).

Forward, per program (batch b, window (wr, wc), head h), all in registers:

1. token t = (ti, tj) of the window sits at (wr*w + ti, wc*w + tj) of the (cyclically shifted)
   map, i.e. at ((wr*w + ti + s) mod H, (wc*w + tj + s) mod W) of qkv, s = w//2 if shifted else
   0: the roll and the partition are index arithmetic on the loads;
2. load q, k, v (w*w, head_dim) of head h at those tokens;
3. logits = q k^T * head_dim^-0.5 + table[h, ti-ti'+w-1, tj-tj'+w-1], the bias gathered from the
   (2w-1)^2 table (it stays in L1/L2); shifted windows of the last window row / column get -inf
   between tokens on opposite sides of w - w//2 (the official generate_mask);
4. softmax over keys (exp2, float32, the full row is in registers: no online rescaling);
5. o = exp2(logits - max) v / rowsum, stored at the tokens' own (un-shifted) positions of out
   (batch, H, W, dim).

Backward recomputes P the same way (no softmax statistics are stored), then
dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(P * dP)), dQ = dS K * scale, dK = dS^T Q * scale,
written to the q / k / v slots of d qkv: every element of d qkv belongs to exactly one
(window, head), so there are no atomics. d rel_pos_bias[h, di, dj] sums dS over all pairs with
that offset, over windows and batch. Each program bins its dS with two small one-hot matmuls
(dS regrouped as (ti, ti') x (tj, tj') times a (tj, tj') -> dj one-hot, then the transpose times
a (ti, ti') -> di one-hot) and writes a (2w-1)^2 partial; a deterministic sum over programs
finishes it (two-stage reduction, 225 floats per program instead of a (windows, heads, 64, 64)
tensor).

Windows whose w*w is not a power of two are padded to WP x WP tokens, WP = next power of two
(>= 4 so that tl.dot gets K, M, N >= 16); padded tokens are masked out of every load, store and
softmax. head_dim is padded the same way to a power of two >= 16.

Numerics: float32 accumulation everywhere; half-precision P and dS are rounded to the input dtype
before their matmuls (as in FlashAttention), float32 inputs use `_FP32_DOT` (see there).
The forward is one program per output tile with a fixed reduction order: bit-identical runs.

Minimum traffic: forward reads qkv once and writes out once: (3 + 1) * B*H*W*dim * itemsize
(25.2 MB for 1 x 96 x 128 x 128 in fp32, 8.4 us at 3 TB/s). Backward reads qkv and d out and
writes d qkv: (3 + 1 + 3) * B*H*W*dim * itemsize, plus the partials (B*windows*heads*(2w-1)^2
floats, 1.4 MB at that shape).

Registration: `mambaic::window_attention_fwd_triton` / `_bwd_triton` are triton_ops launched
through wrap_triton, joined by register_autograd. Eager calls that need no gradient launch the
forward directly (`direct_launch_ok`): the dispatcher's ~15 us of CPU is more than the kernel.
"""

import os

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from .. import _backend
from . import supports_device
from .._backend import direct_launch_ok
from ..window_attention import register_backward
from .cross_scan import launch

# Matmul precision for float32 inputs. "tf32x3" splits each operand into a tf32 high part and a
# tf32 low part and sums three tensor-core products: ~1e-6 relative error (the parity tolerance
# is 1e-5), with the tensor cores' speed. "tf32" alone is ~1e-3, too coarse for float32 parity;
# "ieee" (FMA loops) is exact but costs 1056 FMAs per thread in the forward against 48 wgmma
# instructions, and spills in the backward (sm_90 PTX, Triton 3.8). It only applies to float32
# operands; the interpreter ignores it.
_FP32_DOT = "tf32x3"

_LOG2E = 1.4426950408889634


@triton.jit
def _mm(a, b, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """tl.dot with float32 accumulation; UPCAST multiplies in float32 (only for the interpreter).

    Triton's interpreter (3.6 and 3.8) multiplies the raw uint16 bits of bfloat16 tl.dot operands
    (results off by 1e10; triton-lang/triton#11584, "not supported yet"). The operands are already
    rounded to bfloat16, so upcasting them gives what the GPU's bf16 tensor cores compute (exact
    products, float32 sums).
    """
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=DOT_PRECISION)


@triton.jit
def _window_tokens(pid, H, W, n_rows, n_cols, heads,
                   WINDOW: tl.constexpr, WP: tl.constexpr, SHIFTED: tl.constexpr):
    """This program's (batch, window row, window col, head) and its tokens' qkv rows.

    Programs are ordered head-fastest: programs that run together read adjacent head_dim slices
    of the same qkv rows (a token's q|k|v for all heads is one contiguous 3*dim run), so together
    they consume whole cache lines and DRAM pages.
    """
    head = pid % heads
    win = pid // heads
    wc = win % n_cols
    rest = win // n_cols
    wr = rest % n_rows
    b = rest // n_rows
    tok = tl.arange(0, WP * WP)
    ti = tok // WP
    tj = tok % WP
    valid = (ti < WINDOW) & (tj < WINDOW)
    r = wr * WINDOW + ti
    c = wc * WINDOW + tj
    if SHIFTED:
        # torch.roll(x, -s) then partition: the window's token at shifted (r, c) is x[(r+s)%H, (c+s)%W];
        # rolling the output back by +s puts its result at that same position.
        r = (r + WINDOW // 2) % H
        c = (c + WINDOW // 2) % W
    row = ((b * H + r) * W + c).to(tl.int64)  # token index into the flattened (B*H*W) map
    return b, wr, wc, head, ti, tj, valid, row


@triton.jit
def _window_probs(q, k, table, head, wr, wc, n_rows, n_cols, ti, tj, valid, scale_log2e,
                  WINDOW: tl.constexpr, SHIFTED: tl.constexpr, DOT_PRECISION: tl.constexpr,
                  UPCAST: tl.constexpr):
    """Unnormalised softmax weights (T, T) and 1 / row sums, float32, T = WP*WP padded tokens.

    The forward scales the (T, head_dim) output by 1 / row sum instead of dividing the (T, T) tile.
    """
    # Scores in log2 units: exp2 is the native instruction; log2(e) is folded into the scale.
    s = _mm(q, tl.trans(k), DOT_PRECISION, UPCAST)
    NB: tl.constexpr = 2 * WINDOW - 1
    pair_ok = valid[:, None] & valid[None, :]
    rel = (ti[:, None] - ti[None, :] + WINDOW - 1) * NB + (tj[:, None] - tj[None, :] + WINDOW - 1)
    bias = tl.load(table + head * NB * NB + rel, mask=pair_ok, other=0.0).to(tl.float32)
    logits = s * scale_log2e + bias * 1.4426950408889634
    keep = valid[None, :]  # padded keys never receive weight
    if SHIFTED:
        # Official generate_mask: in the last window row, tokens above and below row S of the
        # window do not see each other (they came from opposite edges of the map); same for the
        # last window column. The diagonal is never masked, so no row is empty.
        S: tl.constexpr = WINDOW - WINDOW // 2
        cross_r = (ti[:, None] < S) != (ti[None, :] < S)
        cross_c = (tj[:, None] < S) != (tj[None, :] < S)
        masked = ((wr == n_rows - 1) & cross_r) | ((wc == n_cols - 1) & cross_c)
        # Only real query rows: a padded row could otherwise lose every key (window 1) and turn
        # into NaN, which the backward would carry into d K and d bias.
        keep = keep & ((masked & valid[:, None]) == 0)
    logits = tl.where(keep, logits, float("-inf"))
    m = tl.max(logits, axis=1)
    p = tl.exp2(logits - m[:, None])  # in (0, 1], 1 at each row's maximum
    return p, 1.0 / tl.sum(p, axis=1)


@triton.jit
def _load_qkv(qkv, row, head, d, io_mask, dim, HEAD_DIM: tl.constexpr):
    # q, k, v of one head at the window's tokens, [T, HD] each, from rows of (q | k | v) x dim.
    src = qkv + row[:, None] * (3 * dim) + head * HEAD_DIM + d[None, :]
    return (tl.load(src, mask=io_mask, other=0.0), tl.load(src + dim, mask=io_mask, other=0.0),
            tl.load(src + 2 * dim, mask=io_mask, other=0.0))


@triton.jit
def _window_attention_fwd_kernel(
    qkv,  # (B, H, W, 3*dim), channels (q|k|v, head, head_dim)
    table,  # (heads, 2w-1, 2w-1)
    out,  # (B, H, W, dim)
    H, W, n_rows, n_cols, heads,  # runtime sizes: a new image size reuses the compiled kernel
    scale_log2e,  # head_dim**-0.5 * log2(e)
    WINDOW: tl.constexpr,  # window side w
    WP: tl.constexpr,  # padded window side: power of two >= 4, so T = WP*WP >= 16 for tl.dot
    HEAD_DIM: tl.constexpr,
    HD: tl.constexpr,  # padded head_dim: power of two >= 16
    SHIFTED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # float32 matmul precision, see _FP32_DOT
    UPCAST: tl.constexpr,  # multiply in float32 (interpreter with bfloat16 only), see _mm
):
    pid = tl.program_id(0)
    b, wr, wc, head, ti, tj, valid, row = _window_tokens(pid, H, W, n_rows, n_cols, heads, WINDOW, WP, SHIFTED)
    dim = heads * HEAD_DIM
    d = tl.arange(0, HD)
    io_mask = valid[:, None] & (d < HEAD_DIM)[None, :]

    # ---- Phase 1: gather q, k, v of this head at the window's tokens (64-byte runs for fp32 d=16).
    q, k, v = _load_qkv(qkv, row, head, d, io_mask, dim, HEAD_DIM)

    # ---- Phase 2: P = softmax(q k^T * scale + bias [+ mask]) in registers.
    p, inv_sum = _window_probs(q, k, table, head, wr, wc, n_rows, n_cols, ti, tj, valid, scale_log2e,
                               WINDOW, SHIFTED, DOT_PRECISION, UPCAST)

    # ---- Phase 3: o = P v, written at the tokens' positions (the inverse roll is the same index).
    o = _mm(p.to(v.dtype), v, DOT_PRECISION, UPCAST) * inv_sum[:, None]
    tl.store(out + row[:, None] * dim + head * HEAD_DIM + d[None, :], o.to(out.dtype.element_ty), mask=io_mask)


@triton.jit
def _window_attention_bwd_kernel(
    qkv,  # (B, H, W, 3*dim)
    table,  # (heads, 2w-1, 2w-1)
    dout,  # (B, H, W, dim)
    dqkv,  # (B, H, W, 3*dim): every element written by exactly one program
    dbias_part,  # (B * windows, heads, 2w-1, 2w-1) float32: this program's binned dS
    H, W, n_rows, n_cols, heads,
    scale,  # head_dim**-0.5
    scale_log2e,
    WINDOW: tl.constexpr,
    WP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HD: tl.constexpr,
    SHIFTED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # float32 matmul precision, see _FP32_DOT
    UPCAST: tl.constexpr,  # multiply in float32 (interpreter with bfloat16 only), see _mm
):
    pid = tl.program_id(0)
    b, wr, wc, head, ti, tj, valid, row = _window_tokens(pid, H, W, n_rows, n_cols, heads, WINDOW, WP, SHIFTED)
    dim = heads * HEAD_DIM
    d = tl.arange(0, HD)
    io_mask = valid[:, None] & (d < HEAD_DIM)[None, :]

    # ---- Phase 1: reload q, k, v and d out; recompute P exactly as the forward did.
    q, k, v = _load_qkv(qkv, row, head, d, io_mask, dim, HEAD_DIM)
    do = tl.load(dout + row[:, None] * dim + head * HEAD_DIM + d[None, :], mask=io_mask, other=0.0)
    p, inv_sum = _window_probs(q, k, table, head, wr, wc, n_rows, n_cols, ti, tj, valid, scale_log2e,
                               WINDOW, SHIFTED, DOT_PRECISION, UPCAST)
    p = p * inv_sum[:, None]  # normalised P

    # ---- Phase 2: softmax backward. Padded query rows have do = 0, padded / masked keys P = 0,
    # so dS vanishes on every pair that does not exist.
    dv = _mm(tl.trans(p.to(do.dtype)), do, DOT_PRECISION, UPCAST)
    dp = _mm(do, tl.trans(v), DOT_PRECISION, UPCAST)
    ds = p * (dp - tl.sum(p * dp, axis=1)[:, None])  # d logits, float32
    dq = _mm(ds.to(k.dtype), k, DOT_PRECISION, UPCAST) * scale
    dk = _mm(tl.trans(ds.to(q.dtype)), q, DOT_PRECISION, UPCAST) * scale
    dst = dqkv + row[:, None] * (3 * dim) + head * HEAD_DIM + d[None, :]
    tl.store(dst, dq.to(dqkv.dtype.element_ty), mask=io_mask)
    tl.store(dst + dim, dk.to(dqkv.dtype.element_ty), mask=io_mask)
    tl.store(dst + 2 * dim, dv.to(dqkv.dtype.element_ty), mask=io_mask)

    # ---- Phase 3: bin dS by relative offset. dS[(ti, tj), (ti', tj')] regrouped as
    # [(ti, ti'), (tj, tj')] (a register permute), times the one-hot (tj, tj') -> dj = tj - tj' + w - 1
    # gives u[(ti, ti'), dj]; u^T times the one-hot (ti, ti') -> di gives g[dj, di]. "ieee" (FMA)
    # keeps dS in full float32 (the one-hot products are exact, only the sums round); on sm_90 it
    # also needs fewer registers than a tf32x3 split of the 64 x 64 dS (116 vs 240 for fp16 inputs).
    T: tl.constexpr = WP * WP
    NB: tl.constexpr = 2 * WINDOW - 1
    NBP: tl.constexpr = 16 if NB <= 16 else 32  # bins padded to a tl.dot-friendly power of two
    ds2 = tl.reshape(tl.permute(tl.reshape(ds, (WP, WP, WP, WP)), (0, 2, 1, 3)), (T, T))
    pair = tl.arange(0, T)
    first = pair // WP  # tj (resp. ti) of the pair
    second = pair % WP  # tj' (resp. ti')
    bins = tl.arange(0, NBP)
    onehot = ((first - second + WINDOW - 1)[:, None] == bins[None, :]).to(tl.float32)  # (T, NBP)
    u = tl.dot(ds2, onehot, input_precision="ieee")  # (T [ti, ti'], NBP [dj])
    g = tl.dot(tl.trans(u), onehot, input_precision="ieee")  # (NBP [dj], NBP [di])
    win = pid // heads
    part = dbias_part + (win.to(tl.int64) * heads + head) * (NB * NB)
    dj = bins[:, None]
    di = bins[None, :]
    tl.store(part + di * NB + dj, g, mask=(di < NB) & (dj < NB))


# --------------------------------------------------------------------------------------------
# Launchers (also called directly by the benchmarks)
# --------------------------------------------------------------------------------------------


def _geometry(qkv, heads, window):
    batch, H, W, C3 = qkv.shape
    head_dim = C3 // 3 // heads
    # Plain bit arithmetic: triton.next_power_of_2 goes through Triton's JIT call path (~4 us a
    # call), which matters for a kernel that runs in ~10 us.
    wp = max(4, 1 << (window - 1).bit_length())
    hd = max(16, 1 << (head_dim - 1).bit_length())
    # 4 warps hold a 64 x 64 float32 score tile at 32 registers per thread: head_dim 16 fits in
    # 96 (forward) / 239 (backward) registers, no spills. Wider heads get 8 warps (head_dim 32:
    # forward 98 registers instead of 128; head_dim 64: the float32 backward spills 40 bytes
    # instead of 440). Register counts from the sm_90 cubin, fp32, Triton 3.8.
    num_warps = 4 if hd <= 16 and wp * wp <= 64 else 8
    return batch, H, W, head_dim, wp, hd, num_warps


def _upcast(dtype):
    return dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"


def forward(qkv, rel_pos_bias, heads, window, shifted, traceable=True):
    """Allocate out and launch the forward: one program per (batch, window, head)."""
    batch, H, W, head_dim, wp, hd, num_warps = _geometry(qkv, heads, window)
    out = torch.empty((batch, H, W, heads * head_dim), dtype=qkv.dtype, device=qkv.device)
    n_rows, n_cols = H // window, W // window
    grid = (batch * n_rows * n_cols * heads,)
    if grid[0] == 0:
        return out
    launch(_window_attention_fwd_kernel, traceable)[grid](
        qkv, rel_pos_bias, out, H, W, n_rows, n_cols, heads, head_dim**-0.5 * _LOG2E,
        WINDOW=window, WP=wp, HEAD_DIM=head_dim, HD=hd, SHIFTED=shifted,
        DOT_PRECISION=_FP32_DOT, UPCAST=_upcast(qkv.dtype), num_warps=num_warps,
    )
    return out


def backward(grad, qkv, rel_pos_bias, heads, window, shifted, traceable=True):
    """(d qkv, d rel_pos_bias) from d out: the backward kernel, then the partials' sum."""
    batch, H, W, head_dim, wp, hd, num_warps = _geometry(qkv, heads, window)
    n_rows, n_cols = H // window, W // window
    nb = 2 * window - 1
    dqkv = torch.empty_like(qkv)
    part = torch.empty((batch * n_rows * n_cols, heads, nb, nb), dtype=torch.float32, device=qkv.device)
    grid = (batch * n_rows * n_cols * heads,)
    if grid[0] == 0:
        return dqkv, torch.zeros_like(rel_pos_bias)
    launch(_window_attention_bwd_kernel, traceable)[grid](
        qkv, rel_pos_bias, grad, dqkv, part, H, W, n_rows, n_cols, heads,
        head_dim**-0.5, head_dim**-0.5 * _LOG2E,
        WINDOW=window, WP=wp, HEAD_DIM=head_dim, HD=hd, SHIFTED=shifted,
        DOT_PRECISION=_FP32_DOT, UPCAST=_upcast(qkv.dtype), num_warps=num_warps,
    )
    # Second stage of the d rel_pos_bias reduction: a fixed-order sum over windows and batch.
    return dqkv, part.sum(0).to(rel_pos_bias.dtype)


# --------------------------------------------------------------------------------------------
# Ops: mambaic::window_attention_{fwd,bwd}_triton, autograd, registration
# --------------------------------------------------------------------------------------------


@triton_op("mambaic::window_attention_fwd_triton", mutates_args=())
def window_attention_fwd(qkv: torch.Tensor, rel_pos_bias: torch.Tensor, heads: int, window: int,
                         shifted: bool) -> torch.Tensor:
    """(B, H, W, 3*dim) -> (B, H, W, dim)."""
    return forward(qkv, rel_pos_bias, heads, window, shifted)


@triton_op("mambaic::window_attention_bwd_triton", mutates_args=())
def window_attention_bwd(grad: torch.Tensor, qkv: torch.Tensor, rel_pos_bias: torch.Tensor, heads: int,
                         window: int, shifted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """d out -> (d qkv, d rel_pos_bias)."""
    return backward(grad, qkv, rel_pos_bias, heads, window, shifted)


register_backward("mambaic::window_attention_fwd_triton", torch.ops.mambaic.window_attention_bwd_triton)


def window_attention(qkv, rel_pos_bias, heads, window, shifted):
    if direct_launch_ok(qkv, rel_pos_bias):
        return forward(qkv, rel_pos_bias, heads, window, shifted, traceable=False)
    return torch.ops.mambaic.window_attention_fwd_triton(qkv, rel_pos_bias, heads, window, shifted)


def _supports(device, dtype, window=None, head_dim=None, **meta):
    reason = supports_device(device, dtype)
    if reason is not None:
        return reason
    if window is not None and window > 8:
        return (f"the triton window_attention kernel holds a window's (w*w)^2 scores in registers "
                f"and takes window <= 8, got window={window}")
    if head_dim is not None and head_dim > 64:
        return (f"the triton window_attention kernel holds q, k, v, dO and their gradients in registers "
                f"and takes head_dim <= 64, got head_dim={head_dim}")
    return None


_backend.register("window_attention", "triton", window_attention, _supports)
