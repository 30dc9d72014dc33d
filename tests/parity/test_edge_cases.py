"""Edge cases of every op, every backend against the torch backend (issue 15, point 3): one step,
one row or column, odd sizes, empty batches and maps, no channels, non-contiguous and channels-last
inputs, NaN and Inf, and (on a GPU) tensors past 2^31 elements. Documented behaviour:

- Every op: non-contiguous inputs, channels-last strides included, are refused with the op's
  ValueError (a channel-last map is cross_scan's ``channel_last=True`` on a contiguous tensor).
- ss2d_core, selective_scan: empty inputs give empty outputs; no channels is refused. A NaN or Inf
  anywhere in u makes its whole image non-finite (NaN, or Inf where the skip term D * u meets it
  first), at the same places in every backend (x_proj mixes the channels of its position into B, C
  and delta, each scan carries the NaN on, and the four directions between them reach every position).
- cross_scan, cross_merge: an empty batch or map, or no channels, gives an empty output and an empty
  gradient. They copy and add, so a NaN or Inf lands where the torch backend puts it: one in x at
  the four steps that visit its position, one in y at the one position its step visits (+Inf and
  -Inf meeting there give NaN); in the backward the same, the other way round.
- window_attention: an empty batch gives an empty output (and a zero rel_pos_bias gradient); no
  channels is refused. A NaN or Inf in token t's head-h slice of q, k or v stays in t's window (of
  the shifted partition when shifted) and head h: only head h's outputs of that window, and in the
  backward only head h's slices of d qkv in that window and d rel_pos_bias[h], turn non-finite.
  Inside, the forward is the torch backend's in every backend: q reaches t's own output; k every
  query of the window whose score it makes NaN or +Inf (a NaN key: all of them); v one channel of
  every output of the window. One documented exception: in the last row or column of shifted
  windows the official mask hides some keys from some queries. The reference and triton leave
  those keys out (masked_fill, as the official code), so a non-finite key does not reach the
  queries it is hidden from; the torch and cpu backends add the mask to the scores inside SDPA, and
  NaN - Inf is NaN, so it does. Which gradients inside the block turn non-finite differs by
  backend (masked_fill's gradient is zero, an added mask's is 0 * NaN; triton bins d
  rel_pos_bias with a one-hot matmul, so all of head h's offsets turn NaN): only the block is promised.
"""

import fcntl
import gc
import tempfile
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import mambaic_kernels as mk
from mambaic_kernels import _backend, reference

from .conftest import DEVICE, require
from .helpers import assert_close, grads, leaf
from .test_ss2d_core import make_inputs

F32 = torch.float32
NONFINITE = [float("nan"), float("inf"), float("-inf")]
NONFINITE_IDS = ["nan", "inf", "-inf"]


def _ss2d(backend, u, w):
    require("ss2d_core", backend, u, d_state=w["A_logs"].shape[1])
    with mk.use_backend(backend):
        return mk.ss2d_core(u, **w)


def _float(u64, w64):
    return u64.float(), {n: t.float() for n, t in w64.items()}


def _same_nonfinite(got, want, op, what):
    """NaN where torch has NaN, +-Inf where it has +-Inf, and the finite rest within the table."""
    assert torch.equal(got.isnan(), want.isnan()), f"{what}: NaN at other places than in the torch backend"
    inf = want.isinf()
    assert torch.equal(got.isinf(), inf) and torch.equal(got[inf], want[inf]), f"{what}: Inf differs from torch"
    finite = want.isfinite()
    assert_close(got[finite], want[finite], op, got.dtype, "fwd", what)


# ---- ss2d_core and selective_scan -------------------------------------------------------------


@pytest.mark.parametrize("case", [(2, 3, 1, 1, 4, 2), (1, 5, 1, 7, 4, 1), (2, 3, 6, 1, 16, 2), (3, 7, 2, 3, 3, 3)],
                         ids=["L1", "one-row", "one-column", "D7-N3"])  # fmt: skip
def test_small_maps_agree_with_torch(backend, case):
    u, w = _float(*make_inputs(*case))
    assert_close(_ss2d(backend, u, w), _ss2d("torch", u, w), "ss2d_core", F32, "fwd", f"{backend} ss2d_core {case}")


@pytest.mark.parametrize("shape", [(0, 3, 4, 5), (2, 3, 0, 5), (2, 3, 4, 0)], ids=["batch0", "H0", "W0"])
def test_empty_inputs_give_empty_outputs(backend, shape):
    _, w = _float(*make_inputs(1, 3, 2, 2, 4, 2))
    u = torch.randn(shape, device=DEVICE)
    out = _ss2d(backend, u, w)
    assert out.shape == (shape[0], shape[2], shape[3], shape[1]) and out.numel() == 0


def test_refused_inputs_name_the_problem(backend):
    u, w = _float(*make_inputs(2, 4, 5, 6, 4, 2))
    require("ss2d_core", backend, u, d_state=4)
    with mk.use_backend(backend):
        with pytest.raises(ValueError, match="u must be contiguous"):
            mk.ss2d_core(u.transpose(2, 3).contiguous().transpose(2, 3), **w)  # an H x W view
        with pytest.raises(ValueError, match="u must be contiguous"):
            mk.ss2d_core(u.contiguous(memory_format=torch.channels_last), **w)
        no_channels = {n: t[..., :0] if n == "x_proj_weight" else t for n, t in w.items()}
        with pytest.raises(ValueError, match="at least one channel"):
            mk.ss2d_core(u[:, :0].contiguous(), **no_channels)


@pytest.mark.parametrize("value", NONFINITE, ids=NONFINITE_IDS)
def test_nan_and_inf_make_the_whole_image_non_finite(backend, value):
    u, w = _float(*make_inputs(2, 4, 5, 6, 4, 2))
    u[1, 2, 3, 4] = value
    got, want = _ss2d(backend, u, w), _ss2d("torch", u, w)
    assert not got[1].isfinite().any(), f"{backend}: {value} at one position must reach the whole image"
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf()), backend
    assert_close(got[0], want[0], "ss2d_core", F32, "fwd", f"{backend}: the other image")  # intact


def test_selective_scan_one_step_and_no_channels(backend):
    u = torch.randn(2, 6, 1, device=DEVICE)
    delta, A = torch.rand(2, 6, 1, device=DEVICE), -torch.rand(6, 4, device=DEVICE)
    B, C = torch.randn(2, 2, 4, 1, device=DEVICE), torch.randn(2, 2, 4, 1, device=DEVICE)
    require("selective_scan", backend, u, d_state=4)
    with mk.use_backend(backend):
        got = mk.selective_scan(u, delta, A, B, C, delta_softplus=True)
        with pytest.raises(ValueError, match="at least one channel"):
            mk.selective_scan(u[:, :0], delta[:, :0], A[:0], B, C)
    with mk.use_backend("torch"):
        want = mk.selective_scan(u, delta, A, B, C, delta_softplus=True)
    assert_close(got, want, "selective_scan", F32, "fwd", f"{backend} selective_scan L=1")


# ---- cross_scan and cross_merge ---------------------------------------------------------------


def _cross(op, backend, t, channel_last):
    require(op, backend, t)
    with mk.use_backend(backend):
        return getattr(mk, op)(t, channel_last=channel_last)


def _map(batch, dim, H, W, channel_last):
    """A fresh random map in the layout cross_scan reads: (batch, dim, H, W) or (batch, H, W, dim)."""
    shape = (batch, H, W, dim) if channel_last else (batch, dim, H, W)
    return torch.randn(shape, device=DEVICE)


def _loose_grad(shape):
    """A fresh random d out that is not contiguous (autograd hands such ones over, e.g. after a permute)."""
    return torch.randn(*reversed(shape), device=DEVICE).permute(*reversed(range(len(shape))))


LAYOUTS = dict(argnames="channel_last", argvalues=[False, True], ids=["channel_first", "channel_last"])

# (batch, dim, H, W), channel_last. The fp32 triton tiles are 1 x 16 x 128 (channel-first: one
# plane, so the channel count only multiplies the programs) and 16 x 16 x 16 (channel-last): the
# maps below spill into second (and third) tiles along each axis its layout tiles, and stay small
# for Triton's interpreter, which runs each program in Python.
CROSS_CASES = [
    pytest.param((2, 3, 1, 1), False, id="B2-C3-1x1-channel_first"),
    pytest.param((2, 3, 1, 1), True, id="B2-C3-1x1-channel_last"),
    pytest.param((3, 2, 1, 9), False, id="B3-C2-one_row-channel_first"),
    pytest.param((3, 5, 1, 9), True, id="B3-C5-one_row-channel_last"),
    pytest.param((2, 2, 7, 1), False, id="B2-C2-one_column-channel_first"),
    pytest.param((2, 17, 7, 1), True, id="B2-C17-one_column-channel_last"),
    pytest.param((2, 3, 17, 130), False, id="B2-C3-H17-W130-channel_first"),
    pytest.param((2, 33, 17, 19), True, id="B2-C33-H17-W19-channel_last"),
]


@pytest.mark.parametrize("shape, channel_last", CROSS_CASES)
def test_cross_scan_and_merge_agree_with_torch(backend, shape, channel_last):
    """Forward, and the gradients under one (non-contiguous) d out, against the torch backend."""
    batch, dim, H, W = shape
    what = f"{backend} {shape} channel_last={channel_last}"
    x = leaf(_map(*shape, channel_last))
    out = _cross("cross_scan", backend, x, channel_last)
    x_t = leaf(x)
    want = _cross("cross_scan", "torch", x_t, channel_last)
    assert_close(out, want, "cross_scan", F32, "fwd", f"cross_scan {what}")
    dout = _loose_grad(want.shape)
    assert_close(*grads(out, [x], dout), *grads(want, [x_t], dout), "cross_scan", F32, "bwd", f"cross_scan dx {what}")

    y = leaf(torch.randn(batch, 4, dim, H, W, device=DEVICE))
    out = _cross("cross_merge", backend, y, channel_last)
    y_t = leaf(y)
    want = _cross("cross_merge", "torch", y_t, channel_last)
    assert_close(out, want, "cross_merge", F32, "fwd", f"cross_merge {what}")
    dout = _loose_grad(want.shape)
    assert_close(*grads(out, [y], dout), *grads(want, [y_t], dout), "cross_merge", F32, "bwd", f"cross_merge dy {what}")


@pytest.mark.parametrize(**LAYOUTS)
@pytest.mark.parametrize("shape", [(0, 3, 4, 5), (2, 0, 4, 5), (2, 3, 0, 5), (2, 3, 4, 0)],
                         ids=["batch0", "C0", "H0", "W0"])  # fmt: skip
def test_cross_empty_inputs_give_empty_outputs(backend, shape, channel_last):
    batch, dim, H, W = shape
    x = leaf(_map(*shape, channel_last))
    y = leaf(torch.randn(batch, 4, dim, H, W, device=DEVICE))
    scanned = (batch, 4, dim, H * W)
    merged = (batch, H * W, dim) if channel_last else (batch, dim, H * W)
    for op, t, want in (("cross_scan", x, scanned), ("cross_merge", y, merged)):
        out = _cross(op, backend, t, channel_last)
        assert out.shape == want and out.dtype == t.dtype, f"{backend} {op}: {tuple(out.shape)}"
        (g,) = grads(out, [t], torch.randn(want, device=DEVICE))  # autograd still reaches the input
        assert g.shape == t.shape
        # The backend's own implementation takes them too, eagerly and under fake tensors (what
        # torch.compile traces with), though the op returns before calling it.
        fn, t = _backend._registry[op][backend].fn, t.detach()
        assert fn(t, channel_last).shape == want
        with FakeTensorMode() as mode:
            assert fn(mode.from_tensor(t), channel_last).shape == want, f"{backend} {op} under fake tensors"


def test_cross_refused_inputs_name_the_problem(backend):
    x = _map(2, 3, 5, 6, channel_last=False)
    y = torch.randn(2, 4, 3, 5, 6, device=DEVICE)
    require("cross_scan", backend, x)
    with mk.use_backend(backend):
        for bad in (x.transpose(2, 3), x.contiguous(memory_format=torch.channels_last), x[..., ::2]):
            with pytest.raises(ValueError, match=r"cross_scan: x must be contiguous, got strides .*call \.contiguous"):
                mk.cross_scan(bad)
        with pytest.raises(ValueError, match="cross_scan: x must be contiguous"):
            mk.cross_scan(x.permute(0, 2, 3, 1), channel_last=True)  # channel-last values, not its memory
        for bad in (y.transpose(3, 4), y.contiguous(memory_format=torch.channels_last_3d), y[:, :, 1:]):
            with pytest.raises(ValueError, match="cross_merge: y must be contiguous"):
                mk.cross_merge(bad)
        with pytest.raises(ValueError, match=r"cross_merge: y must have 4 scan directions in dim 1, got shape \(0, 3"):
            mk.cross_merge(y[:0, :3].contiguous())  # checked before the empty shortcut


@pytest.mark.parametrize(**LAYOUTS)
@pytest.mark.parametrize("value", NONFINITE, ids=NONFINITE_IDS)
def test_cross_scan_nan_and_inf_land_where_torch_puts_them(backend, value, channel_last):
    x = _map(2, 5, 3, 4, channel_last)
    x[1, 2, 1, 3] = value  # one element
    out = _cross("cross_scan", backend, x, channel_last)
    _same_nonfinite(out, _cross("cross_scan", "torch", x, channel_last), "cross_scan", f"{backend} cross_scan {value}")
    assert int((~out.isfinite()).sum()) == 4, "one position is visited by each of the four directions"
    # The backward, a merge: one non-finite element of d out reaches one element of d x.
    x = leaf(_map(2, 5, 3, 4, channel_last))
    dout = torch.randn(2, 4, 5, 12, device=DEVICE)
    dout[1, 3, 2, 7] = value
    got = grads(_cross("cross_scan", backend, x, channel_last), [x], dout)[0]
    want = grads(_cross("cross_scan", "torch", x, channel_last), [x], dout)[0]
    _same_nonfinite(got, want, "cross_scan", f"{backend} cross_scan dx {value}")
    assert int((~got.isfinite()).sum()) == 1


@pytest.mark.parametrize(**LAYOUTS)
@pytest.mark.parametrize("value", NONFINITE, ids=NONFINITE_IDS)
def test_cross_merge_nan_and_inf_land_where_torch_puts_them(backend, value, channel_last):
    batch, dim, H, W = 2, 5, 3, 4
    L = H * W
    y = torch.randn(batch, 4, dim, H, W, device=DEVICE)
    y[1, 1, 2, 2, 3] = value  # direction 1's step 2 * 4 + 3 = 11, column-major: (h, w) = (2, 3), position 11
    # +Inf and -Inf on the two row-major directions' visits of position 5 of image 0, channel 4: NaN
    y.view(batch, 4, dim, L)[0, 0, 4, 5] = float("inf")
    y.view(batch, 4, dim, L)[0, 2, 4, L - 1 - 5] = float("-inf")
    out = _cross("cross_merge", backend, y, channel_last)
    want = _cross("cross_merge", "torch", y, channel_last)
    _same_nonfinite(out, want, "cross_merge", f"{backend} cross_merge {value}")
    seq = out if channel_last else out.transpose(1, 2)  # (batch, L, dim)
    assert seq[0, 5, 4].isnan() and not seq[1, 11, 2].isfinite() and int((~seq.isfinite()).sum()) == 2
    # The backward, a scan: one non-finite element of d out reaches the four steps that visit it.
    y = leaf(torch.randn(batch, 4, dim, H, W, device=DEVICE))
    dout = torch.randn(want.shape, device=DEVICE)
    dout[(1, 7, 3) if channel_last else (1, 3, 7)] = value  # position 7, channel 3
    got = grads(_cross("cross_merge", backend, y, channel_last), [y], dout)[0]
    want = grads(_cross("cross_merge", "torch", y, channel_last), [y], dout)[0]
    _same_nonfinite(got, want, "cross_merge", f"{backend} cross_merge dy {value}")
    assert int((~got.isfinite()).sum()) == 4


# ---- window_attention -------------------------------------------------------------------------


def _attend(backend, qkv, table, heads, window, shifted):
    require("window_attention", backend, qkv, window=window, head_dim=qkv.shape[-1] // 3 // heads)
    with mk.use_backend(backend):
        return mk.window_attention(qkv, table, heads, window, shifted=shifted)


def _attention_inputs(batch, H, W, heads, head_dim, window):
    qkv = torch.randn(batch, H, W, 3 * heads * head_dim, device=DEVICE)
    return qkv, torch.randn(heads, 2 * window - 1, 2 * window - 1, device=DEVICE)


SHIFTS = dict(argnames="shifted", argvalues=[False, True], ids=["plain", "shifted"])

# (batch, H, W, heads, head_dim, window): odd head_dims (triton pads them to 16 or 32 lanes),
# one window and many, H != W, and a window of 5 (triton pads its 25 tokens to 64).
ATTENTION_CASES = [
    pytest.param((2, 8, 8, 1, 3, 8), id="B2-one_window-h1-d3"),
    pytest.param((3, 16, 24, 3, 5, 8), id="B3-2x3_windows-h3-d5"),
    pytest.param((2, 8, 16, 2, 1, 8), id="B2-1x2_windows-h2-d1"),
    pytest.param((1, 16, 8, 1, 17, 8), id="B1-2x1_windows-h1-d17"),
    pytest.param((2, 10, 15, 2, 3, 5), id="B2-2x3_windows_w5-h2-d3"),
]


@pytest.mark.parametrize(**SHIFTS)
@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_window_attention_agrees_with_torch(backend, case, shifted):
    batch, H, W, heads, head_dim, window = case
    what = f"{backend} window_attention {case} shifted={shifted}"
    qkv, table = (leaf(t) for t in _attention_inputs(*case))
    out = _attend(backend, qkv, table, heads, window, shifted)
    qkv_t, table_t = leaf(qkv), leaf(table)
    want = _attend("torch", qkv_t, table_t, heads, window, shifted)
    assert_close(out, want, "window_attention", F32, "fwd", what)
    dout = _loose_grad(want.shape)
    got, expected = grads(out, [qkv, table], dout), grads(want, [qkv_t, table_t], dout)
    for name, a, b in zip(("dqkv", "drel_pos_bias"), got, expected):
        assert_close(a, b, "window_attention", F32, "bwd", f"{what} {name}")


def test_window_attention_empty_batch(backend):
    qkv, table = (leaf(t) for t in _attention_inputs(0, 8, 16, 2, 3, 8))
    for shifted in (False, True):
        out = _attend(backend, qkv, table, 2, 8, shifted)
        assert out.shape == (0, 8, 16, 6) and out.dtype == qkv.dtype
        dqkv, dtable = grads(out, [qkv, table], torch.randn(out.shape, device=DEVICE))
        assert dqkv.shape == qkv.shape and torch.equal(dtable, torch.zeros_like(table)), "no window, no bias gradient"


def test_window_attention_refused_inputs_name_the_problem(backend):
    qkv, table = _attention_inputs(2, 8, 16, 2, 3, 8)
    require("window_attention", backend, qkv, window=8, head_dim=3)
    with mk.use_backend(backend):
        channels_first = qkv.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
        for bad in (qkv.transpose(1, 2).contiguous().transpose(1, 2), channels_first):
            with pytest.raises(ValueError, match="window_attention: qkv must be contiguous"):
                mk.window_attention(bad, table, 2)
        with pytest.raises(ValueError, match="window_attention: rel_pos_bias must be contiguous"):
            mk.window_attention(qkv, table.transpose(1, 2), 2)
        no_channels = r"qkv's last dim must be 3 \* heads \* head_dim, a positive multiple of 6, got 0"
        with pytest.raises(ValueError, match=no_channels):
            mk.window_attention(qkv[..., :0].contiguous(), table, 2)


def _window_of(H, W, window, shifted, r, c):
    """(H, W) bool: the positions in the window of position (r, c), in the shifted partition if shifted."""
    s = window // 2 if shifted else 0
    rows = (torch.arange(H, device=DEVICE) - s) % H // window
    cols = (torch.arange(W, device=DEVICE) - s) % W // window
    return (rows == rows[r])[:, None] & (cols == cols[c])[None, :]


@pytest.mark.parametrize(**SHIFTS)
@pytest.mark.parametrize("part", [0, 1, 2], ids=["q", "k", "v"])
@pytest.mark.parametrize("value", NONFINITE[:2], ids=NONFINITE_IDS[:2])
def test_window_attention_nan_and_inf_stay_in_their_window(backend, value, part, shifted):
    batch, H, W, heads, head_dim, window = 2, 16, 24, 2, 3, 8
    dim, h = heads * head_dim, 1
    # Image 0: a token of an inner window; image 1: one of the last window row and column, where
    # shifted windows are masked. Each image's block: that window, head h's channels.
    tokens = [(0, 6, 7), (1, 15, 23)]
    qkv, table = _attention_inputs(batch, H, W, heads, head_dim, window)
    block_out = torch.zeros(batch, H, W, dim, dtype=torch.bool, device=DEVICE)
    block_dqkv = torch.zeros(batch, H, W, 3, dim, dtype=torch.bool, device=DEVICE)
    for b, r, c in tokens:
        qkv[b, r, c, part * dim + h * head_dim + 1] = value
        win = _window_of(H, W, window, shifted, r, c)
        block_out[b, :, :, h * head_dim:(h + 1) * head_dim] |= win[..., None]
        block_dqkv[b, :, :, :, h * head_dim:(h + 1) * head_dim] |= win[..., None, None]
    block_dqkv = block_dqkv.view(batch, H, W, 3 * dim)
    what = f"{backend} {value} in {'qkv'[part]} shifted={shifted}"

    qkv, table = leaf(qkv), leaf(table)
    out = _attend(backend, qkv, table, heads, window, shifted)
    qkv_t, table_t = leaf(qkv), leaf(table)
    want = _attend("torch", qkv_t, table_t, heads, window, shifted)
    bad, want_bad = ~out.isfinite(), ~want.isfinite()
    assert not (bad & ~block_out).any(), f"{what}: non-finite outputs outside the window and head"
    assert bad[0].any() and bad[1].any(), f"{what}: the non-finite value vanished"
    if shifted and part == 1 and not torch.equal(bad, want_bad):
        # The documented exception (module docstring): masked keys are left out, as the reference does.
        ref_bad = ~reference.window_attention(qkv.detach(), table.detach(), heads, window, shifted).isfinite()
        assert torch.equal(bad, ref_bad), f"{what}: non-finite outputs are neither torch's nor the reference's"
    else:
        assert torch.equal(bad, want_bad), f"{what}: non-finite outputs at other places than in the torch backend"
    both = ~bad & ~want_bad
    assert_close(out[both], want[both], "window_attention", F32, "fwd", what)

    dout = torch.randn(out.shape, device=DEVICE)
    (dqkv, dtable), (dqkv_t, dtable_t) = grads(out, [qkv, table], dout), grads(want, [qkv_t, table_t], dout)
    assert not (~dqkv.isfinite() & ~block_dqkv).any(), f"{what}: non-finite d qkv outside the window and head"
    assert not dqkv.isfinite().all() and not dtable[h].isfinite().all(), f"{what}: the non-finite value vanished"
    assert_close(dqkv[~block_dqkv], dqkv_t[~block_dqkv], "window_attention", F32, "bwd", f"{what} dqkv")
    others = torch.arange(heads, device=DEVICE) != h
    assert_close(dtable[others], dtable_t[others], "window_attention", F32, "bwd", f"{what} drel_pos_bias")


# ---- past 2^31 elements (GPU only) ------------------------------------------------------------
#
# One case per op whose tensors pass 2^31 elements, where an int32 offset would wrap: each backend
# runs the whole case (float32, forward and backward), and a few whole images, channels or window
# bands at the end (past 2^31) and at the start are compared with the torch backend run on those
# slices alone (ops treat images, and cross_scan / cross_merge channels, independently), never
# the whole tensors. Each such tensor is about 9 GB in float32; a case holds a few.

INT32_WRAP = 2**31  # where an int32 element offset wraps
_GPU_GIB = torch.cuda.get_device_properties(0).total_memory / 2**30 if DEVICE == "cuda" else 0.0


def _gpu_reason(gib):
    return (f"needs a CUDA GPU with {gib} GiB: a case past 2^31 elements, 9 GB per float32 tensor; "
            + (f"this GPU has {_GPU_GIB:.0f} GiB" if DEVICE == "cuda" else "this run has no GPU"))


def past_2_31(gib):
    """Skip unless a CUDA GPU holds `gib` GiB: 40 / 60 GiB, the cases whose tensors (listed beside
    them) need half of that."""
    return pytest.mark.skipif(_GPU_GIB < gib, reason=_gpu_reason(gib))


def require_gpu_gib(backend, needs):
    """Skip unless a CUDA GPU holds what this backend's case needs (`needs`: GiB per backend, from the
    sums of its tensors written beside the case; the free_gpu fixture prints the measured peak)."""
    gib = needs.get(backend, max(needs.values()))
    if _GPU_GIB < gib:
        pytest.skip(f"{backend}: " + _gpu_reason(gib))


@pytest.fixture
def free_gpu(request):
    """One big case at a time on the GPU (pytest-xdist's workers share it: two at once ran out of
    its memory on the H200), its memory handed back after, passed or failed; its peak printed
    (`-s` shows it), from which the cases' `past_2_31` needs come."""
    with open(Path(tempfile.gettempdir()) / "mambaic_past_2_31.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        torch.cuda.reset_peak_memory_stats()
        try:
            yield
        finally:
            print(f"\n{request.node.name}: peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
            gc.collect()
            torch.cuda.empty_cache()


def _channels(t, chans, channel_last):
    """The channels `chans` of a map in either layout, as a contiguous tensor the op accepts."""
    return (t[..., chans] if channel_last else t[:, chans]).contiguous()


# (batch, dim, H, W): two odd 2K-like maps; their four directions hold 2.32e9 elements.
BIG_MAP = (2, 139, 1087, 1923)
BIG_ATTENTION = (2, 560, 1944, 12, 28, 8)  # (batch, H, W, heads, head_dim, window): qkv 2.19e9 elements
BIG_SCAN = (8400, 32, 8195, 2, 4)  # (batch, KD, L, K, N): u, delta and y 2.2e9 elements each
BIG_SS2D = (8400, 32, 91, 90, 4, 2)  # (batch, dim, H, W, N, R): u and the output 2.2e9 elements each
BIG_SLICES = [(0, slice(0, 2)), (1, slice(BIG_MAP[1] - 3, BIG_MAP[1]))]  # (image, channels)


@past_2_31(40)
@pytest.mark.parametrize(**LAYOUTS)
def test_cross_scan_past_2_31_elements(backend, channel_last, free_gpu):
    x = leaf(_map(*BIG_MAP, channel_last))
    out = _cross("cross_scan", backend, x, channel_last)
    assert out.numel() > INT32_WRAP  # the second image's last channels of directions 2 and 3 lie past it
    dout = torch.randn_like(out)
    (dx,) = grads(out, [x], dout)
    for b, chans in BIG_SLICES:
        what = f"{backend} cross_scan {BIG_MAP} channel_last={channel_last}, image {b} channels {chans}"
        xs = leaf(_channels(x[b : b + 1], chans, channel_last))
        want = _cross("cross_scan", "torch", xs, channel_last)
        assert_close(out[b : b + 1, :, chans], want, "cross_scan", F32, "fwd", what)
        (dxs,) = grads(want, [xs], dout[b : b + 1, :, chans].contiguous())
        assert_close(_channels(dx[b : b + 1], chans, channel_last), dxs, "cross_scan", F32, "bwd", f"{what} dx")


@past_2_31(40)
@pytest.mark.parametrize(**LAYOUTS)
def test_cross_merge_past_2_31_elements(backend, channel_last, free_gpu):
    batch, dim, H, W = BIG_MAP
    y = leaf(torch.randn(batch, 4, dim, H, W, device=DEVICE))
    assert y.numel() > INT32_WRAP
    out = _cross("cross_merge", backend, y, channel_last)
    dout = torch.randn_like(out)
    (dy,) = grads(out, [y], dout)
    for b, chans in BIG_SLICES:
        what = f"{backend} cross_merge {BIG_MAP} channel_last={channel_last}, image {b} channels {chans}"
        ys = leaf(y[b : b + 1, :, chans].contiguous())
        want = _cross("cross_merge", "torch", ys, channel_last)
        got = out[b : b + 1, :, chans] if channel_last else out[b : b + 1, chans]
        assert_close(got, want, "cross_merge", F32, "fwd", what)
        (dys,) = grads(want, [ys], (dout[b : b + 1, :, chans] if channel_last else dout[b : b + 1, chans]).contiguous())
        assert_close(dy[b : b + 1, :, chans], dys, "cross_merge", F32, "bwd", f"{what} dy")


@past_2_31(60)
@pytest.mark.parametrize(**SHIFTS)
def test_window_attention_past_2_31_elements(backend, shifted, free_gpu):
    batch, H, W, heads, head_dim, window = BIG_ATTENTION
    qkv, table = (leaf(t) for t in _attention_inputs(*BIG_ATTENTION))
    assert qkv.numel() > INT32_WRAP
    out = _attend(backend, qkv, table, heads, window, shifted)
    dout = torch.randn_like(out)
    (dqkv,) = grads(out, [qkv], dout)  # d rel_pos_bias sums every window: not comparable on a band
    # A band of whole windows near the end of the second image (past 2^31 in qkv): the last window
    # row; shifted, the second-to-last window row of the shifted partition without its last
    # (wrapped) column, whose windows are unmasked, so that the band's plain attention is theirs.
    rows, cols = (slice(H - 12, H - 4), slice(4, W - 4)) if shifted else (slice(H - 8, H), slice(0, W))
    band = leaf(qkv[1:, rows, cols].contiguous())
    want = _attend("torch", band, table.detach(), heads, window, False)
    what = f"{backend} window_attention shifted={shifted}, image 1 rows {rows} columns {cols}"
    assert_close(out[1:, rows, cols], want, "window_attention", F32, "fwd", what)
    (dband,) = grads(want, [band], dout[1:, rows, cols].contiguous())
    assert_close(dqkv[1:, rows, cols], dband, "window_attention", F32, "bwd", f"{what} dqkv")


def _scan_inputs(batch, KD, L, K, N):
    """selective_scan's inputs in the model's ranges: delta before softplus, A negative."""
    f = dict(device=DEVICE)
    return dict(u=torch.randn(batch, KD, L, **f), delta=torch.randn(batch, KD, L, **f) * 0.5 - 2.0,
                A=-torch.rand(KD, N, **f) - 0.1, B=torch.randn(batch, K, N, L, **f), C=torch.randn(batch, K, N, L, **f),
                D=torch.randn(KD, **f))  # fmt: skip


# GiB each backend's big scan case needs. cuda and triton: u, delta, y, dy, du, ddelta (8.8 GB each)
# and B, C, dB, dC (2.2 GB each), 62 GB, plus slices for the comparison; torch: more (its chunks),
# passed on the H200 (141 GiB), not measured.
SCAN_GIB = {"cuda": 70, "triton": 70, "torch": 120}
# cuda: forward u, cols, the two accumulators (8.8 GB each) and the projections (11 GB), 46 GB; then
# u, out, dout, du (35 GB) and ten maps of a group of 2^29 elements (21 GB), 56 GB. triton and torch
# run a direction at a time through autograd, with more copies: passed on the H200, not measured.
SS2D_GIB = {"cuda": 70, "triton": 120, "torch": 120}


@past_2_31(min(SCAN_GIB.values()))
def test_selective_scan_past_2_31_elements(backend, free_gpu):
    require_gpu_gib(backend, SCAN_GIB)
    batch, KD, L, K, N = BIG_SCAN
    inputs = {n: leaf(t) for n, t in _scan_inputs(*BIG_SCAN).items()}
    assert inputs["u"].numel() > INT32_WRAP
    require("selective_scan", backend, inputs["u"], d_state=N)
    with mk.use_backend(backend):
        out = mk.selective_scan(**inputs, delta_softplus=True)
    dout = torch.randn_like(out)
    per_image = ("u", "delta", "B", "C")  # dA and dD sum over the batch: not comparable on a slice
    got = grads(out, [inputs[n] for n in per_image], dout)
    for images in (slice(0, 1), slice(batch - 2, batch)):  # the last two lie past 2^31
        what = f"{backend} selective_scan ({batch}, {KD}, {L}), images {images}"
        sliced = {n: leaf(t[images].contiguous()) if n in per_image else t.detach() for n, t in inputs.items()}
        with mk.use_backend("torch"):
            want = mk.selective_scan(**sliced, delta_softplus=True)
        assert_close(out[images], want, "selective_scan", F32, "fwd", what)
        for name, g, w in zip(per_image, got, grads(want, [sliced[n] for n in per_image], dout[images].contiguous())):
            assert_close(g[images], w, "selective_scan", F32, "bwd", f"{what} d{name}")


@past_2_31(min(SS2D_GIB.values()))
def test_ss2d_core_past_2_31_elements(backend, free_gpu):
    require_gpu_gib(backend, SS2D_GIB)
    batch, dim, H, W, N, R = BIG_SS2D
    w = {n: t.float() for n, t in make_inputs(1, dim, 1, 1, N, R)[1].items()}  # no gradients: they sum over the batch
    u = leaf(torch.randn(batch, dim, H, W, device=DEVICE))
    assert u.numel() > INT32_WRAP
    require("ss2d_core", backend, u, d_state=N)
    # The torch backend's autograd would keep every direction's sequence, delta and scan output
    # (4 x 3 maps of 8.8 GB beside u, its gradient and the rest: more than the GPU holds), so it
    # runs the forward alone; the fused backends save nothing and recompute in their backward.
    with mk.use_backend(backend), torch.set_grad_enabled(backend != "torch"):
        out = mk.ss2d_core(u, **w)
    dout = torch.randn_like(out)
    du = grads(out, [u], dout)[0] if backend != "torch" else None
    for images in (slice(0, 1), slice(batch - 2, batch)):  # the last two lie past 2^31
        what = f"{backend} ss2d_core ({batch}, {dim}, {H}, {W}), images {images}"
        us = leaf(u[images].contiguous())
        want = _ss2d("torch", us, w)
        assert_close(out[images], want, "ss2d_core", F32, "fwd", what)
        if du is not None:
            (dus,) = grads(want, [us], dout[images].contiguous())
            assert_close(du[images], dus, "ss2d_core", F32, "bwd", f"{what} du")
