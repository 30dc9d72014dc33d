"""cross_scan / cross_merge: reference vs naive loops, gradcheck, every backend vs the reference."""

import pytest
import torch

import mambaic_kernels as mk
from mambaic_kernels import reference

from .conftest import DEVICE, INTERPRETED, require
from .helpers import assert_close, check_low_precision, grads, leaf

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

CASES = [
    pytest.param((2, 3, 5, 7), id="B2-C3-H5-W7"),
    pytest.param((1, 4, 1, 1), id="B1-C4-1x1"),
    pytest.param((3, 2, 1, 9), id="B3-C2-H1-W9"),
    pytest.param((2, 5, 13, 4), id="B2-C5-H13-W4"),
    pytest.param((1, 1, 8, 8), id="B1-C1-8x8"),
]
if DEVICE == "cuda" and not INTERPRETED:
    CASES += [pytest.param((2, 96, 67, 133), id="B2-C96-H67-W133")]


def naive_cross_scan(x):
    """(B, C, H, W) float64 -> (B, 4, C, L) with explicit loops over positions."""
    Bn, C, H, W = x.shape
    L = H * W
    out = torch.empty(Bn, 4, C, L, dtype=torch.float64)
    for h in range(H):
        for w in range(W):
            out[:, 0, :, h * W + w] = x[:, :, h, w]
            out[:, 1, :, w * H + h] = x[:, :, h, w]
            out[:, 2, :, L - 1 - (h * W + w)] = x[:, :, h, w]
            out[:, 3, :, L - 1 - (w * H + h)] = x[:, :, h, w]
    return out


def naive_cross_merge(y):
    """(B, 4, C, H, W) float64 -> (B, C, L) with explicit loops over positions."""
    Bn, _, C, H, W = y.shape
    L = H * W
    seq = y.reshape(Bn, 4, C, L)
    out = torch.zeros(Bn, C, L, dtype=torch.float64)
    for h in range(H):
        for w in range(W):
            p = h * W + w
            q = w * H + h
            out[:, :, p] = seq[:, 0, :, p] + seq[:, 1, :, q] + seq[:, 2, :, L - 1 - p] + seq[:, 3, :, L - 1 - q]
    return out


@pytest.mark.parametrize("shape", CASES[:5])
def test_reference_matches_naive(shape):
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(reference.cross_scan(x), naive_cross_scan(x), rtol=0, atol=0)
    torch.testing.assert_close(reference.cross_scan(x.permute(0, 2, 3, 1), channel_last=True), naive_cross_scan(x))
    y = torch.randn(shape[0], 4, *shape[1:], dtype=torch.float64)
    torch.testing.assert_close(reference.cross_merge(y), naive_cross_merge(y))
    torch.testing.assert_close(reference.cross_merge(y, channel_last=True), naive_cross_merge(y).transpose(1, 2))


def test_merge_is_adjoint_of_scan():
    """<scan(x), y> == <x, merge(y)>: cross_merge is the transpose of cross_scan."""
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    y = torch.randn(2, 4, 3, 5, 7, dtype=torch.float64)
    lhs = (reference.cross_scan(x) * y.reshape(2, 4, 3, 35)).sum()
    rhs = (x.reshape(2, 3, 35) * reference.cross_merge(y)).sum()
    torch.testing.assert_close(lhs, rhs)


@pytest.mark.parametrize("channel_last", [False, True], ids=["channel_first", "channel_last"])
def test_reference_gradcheck(channel_last):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    xin = x.permute(0, 2, 3, 1).detach().requires_grad_() if channel_last else x
    assert torch.autograd.gradcheck(lambda t: reference.cross_scan(t, channel_last=channel_last), (xin,))
    y = torch.randn(2, 4, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: reference.cross_merge(t, channel_last=channel_last), (y,))


@pytest.mark.parametrize("channel_last", [False, True], ids=["channel_first", "channel_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", CASES)
def test_cross_scan_backend(backend, shape, dtype, channel_last):
    x64 = torch.randn(shape, dtype=torch.float64, device=DEVICE)
    if channel_last:
        x64 = x64.permute(0, 2, 3, 1).contiguous()
    x = leaf(x64, dtype)
    require("cross_scan", backend, x)
    with mk.use_backend(backend):
        out = mk.cross_scan(x, channel_last=channel_last)
    xr = leaf(x.detach(), torch.float64)
    expected = reference.cross_scan(xr, channel_last=channel_last)
    assert out.dtype == dtype
    assert_close(out, expected, "cross_scan", dtype, "fwd", f"{backend} cross_scan {shape}")
    dout = torch.randn_like(expected)
    (gx,) = grads(out, [x], dout.to(dtype))
    (gref,) = grads(expected, [xr], dout.to(dtype).double())
    assert_close(gx, gref, "cross_scan", dtype, "bwd", f"{backend} cross_scan dx {shape}")


@pytest.mark.parametrize("channel_last", [False, True], ids=["to_channel_first", "to_channel_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", CASES)
def test_cross_merge_backend(backend, shape, dtype, channel_last):
    Bn, C, H, W = shape
    y = leaf(torch.randn(Bn, 4, C, H, W, dtype=torch.float64, device=DEVICE), dtype)
    require("cross_merge", backend, y)
    with mk.use_backend(backend):
        out = mk.cross_merge(y, channel_last=channel_last)
    yr = leaf(y.detach(), torch.float64)
    expected = reference.cross_merge(yr, channel_last=channel_last)
    assert out.dtype == dtype
    assert_close(out, expected, "cross_merge", dtype, "fwd", f"{backend} cross_merge {shape}")
    check_low_precision(out, reference.cross_merge(y.detach(), channel_last=channel_last), expected,
                        "cross_merge", dtype, "fwd", f"{backend} cross_merge {shape}")
    dout = torch.randn_like(expected)
    (gy,) = grads(out, [y], dout.to(dtype))
    (gref,) = grads(expected, [yr], dout.to(dtype).double())
    assert_close(gy, gref, "cross_merge", dtype, "bwd", f"{backend} cross_merge dy {shape}")


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"cross_scan: x must be 4-D, got shape \(2, 3, 4\)"):
        mk.cross_scan(torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="cross_scan: x must have a floating dtype"):
        mk.cross_scan(torch.ones(1, 1, 2, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="cross_scan: x must be contiguous"):
        mk.cross_scan(torch.randn(1, 4, 3, 2).transpose(2, 3))
    with pytest.raises(ValueError, match="cross_merge: y must have 4 scan directions"):
        mk.cross_merge(torch.randn(1, 2, 3, 4, 5))
