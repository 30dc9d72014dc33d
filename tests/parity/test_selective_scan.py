"""selective_scan: reference vs a naive per-element loop, gradcheck, every backend vs the reference."""

import math

import pytest
import torch

import mambaic_kernels as mk
from mambaic_kernels import _backend, reference

from .conftest import DEVICE, INTERPRETED, require
from .helpers import assert_close, check_low_precision, grads, leaf

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (batch, K, G channels per group, N, L)
CASES = [
    pytest.param((2, 4, 3, 16, 37), id="B2-K4-G3-N16-L37"),
    pytest.param((1, 4, 2, 16, 1), id="B1-K4-G2-N16-L1"),
    pytest.param((3, 1, 5, 4, 64), id="B3-K1-G5-N4-L64"),
    pytest.param((2, 4, 2, 7, 130), id="B2-K4-G2-N7-L130"),
]
if DEVICE == "cuda" and not INTERPRETED:
    # the float64 reference steps through L in Python and autograd keeps every step: L ~ 2000 is
    # already long enough to cross many chunks of any kernel
    CASES += [pytest.param((2, 4, 24, 16, 2053), id="B2-K4-G24-N16-L2053"),
              # L a multiple of 4 past one 512-step tile: the cuda kernel's 16-byte path
              pytest.param((2, 4, 16, 16, 1540), id="B2-K4-G16-N16-L1540")]

FLAGS = [
    pytest.param(dict(softplus=True, D=True, bias=True), id="softplus-D-bias"),
    pytest.param(dict(softplus=False, D=False, bias=False), id="plain"),
]


def make_inputs(batch, K, G, N, L, flags, device=DEVICE):
    """Realistic value ranges: A = -exp(A_log) < 0, delta around softplus' knee (float64)."""
    KD = K * G
    f = dict(dtype=torch.float64, device=device)
    u = torch.randn(batch, KD, L, **f)
    delta = torch.randn(batch, KD, L, **f) * 0.5
    if not flags["softplus"]:
        delta = delta.abs() * 0.2  # a raw step size must be positive
    A = -torch.exp(torch.randn(KD, N, **f) * 0.5)
    B = torch.randn(batch, K, N, L, **f)
    C = torch.randn(batch, K, N, L, **f)
    D = torch.randn(KD, **f) if flags["D"] else None
    bias = torch.randn(KD, **f) * 0.5 if flags["bias"] else None
    return u, delta, A, B, C, D, bias


def naive_selective_scan(u, delta, A, B, C, D, bias, softplus):
    """Scalar loops over batch, channel, state and time, float64."""
    batch, KD, L = u.shape
    K, N = B.shape[1], A.shape[1]
    G = KD // K
    y = torch.zeros(batch, KD, L, dtype=torch.float64)
    for b in range(batch):
        for d in range(KD):
            k = d // G
            for n in range(N):
                h = 0.0
                for t in range(L):
                    dt = float(delta[b, d, t]) + (float(bias[d]) if bias is not None else 0.0)
                    if softplus:
                        dt = dt if dt > 20 else math.log1p(math.exp(dt))
                    h = math.exp(dt * float(A[d, n])) * h + dt * float(B[b, k, n, t]) * float(u[b, d, t])
                    y[b, d, t] += float(C[b, k, n, t]) * h
            if D is not None:
                y[b, d] += float(D[d]) * u[b, d]
    return y


@pytest.mark.parametrize("flags", FLAGS)
@pytest.mark.parametrize("size", [(2, 2, 2, 3, 9), (1, 4, 1, 2, 1)], ids=["B2-K2-G2-N3-L9", "B1-K4-G1-N2-L1"])
def test_reference_matches_naive(size, flags):
    u, delta, A, B, C, D, bias = make_inputs(*size, flags, device="cpu")
    torch.testing.assert_close(
        reference.selective_scan(u, delta, A, B, C, D, bias, flags["softplus"]),
        naive_selective_scan(u, delta, A, B, C, D, bias, flags["softplus"]),
    )


@pytest.mark.parametrize("flags", FLAGS)
def test_reference_gradcheck(flags):
    inputs = [leaf(t) if t is not None else None for t in make_inputs(2, 2, 2, 3, 6, flags, device="cpu")]
    present = [t for t in inputs if t is not None]

    def fn(*args):
        it = iter(args)
        full = [next(it) if t is not None else None for t in inputs]
        return reference.selective_scan(*full, flags["softplus"])

    assert torch.autograd.gradcheck(fn, present)


@pytest.mark.parametrize("flags", FLAGS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES)
def test_selective_scan_backend(backend, case, dtype, flags):
    inputs64 = make_inputs(*case, flags)
    # u, delta, B, C in the tested dtype; A, D, delta_bias stay float32 as in the model
    low = [leaf(t, dtype if i in (0, 1, 3, 4) else torch.float32) if t is not None else None
           for i, t in enumerate(inputs64)]
    require("selective_scan", backend, low[0], d_state=case[3])
    u, delta, A, B, C, D, bias = low
    with mk.use_backend(backend):
        out = mk.selective_scan(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=flags["softplus"])
    ref_in = [leaf(t.detach(), torch.float64) if t is not None else None for t in low]
    expected = reference.selective_scan(*ref_in, flags["softplus"])
    what = f"{backend} selective_scan {case} {flags}"
    assert out.dtype == dtype
    assert_close(out, expected, "selective_scan", dtype, "fwd", what)
    check_low_precision(out, reference.selective_scan(*[t.detach() if t is not None else None for t in low],
                                                      flags["softplus"]),
                        expected, "selective_scan", dtype, "fwd", what)
    dout = torch.randn_like(expected)
    g = grads(out, low, dout.to(dtype))
    gr = grads(expected, ref_in, dout.to(dtype).double())
    for name, a, b in zip(("du", "ddelta", "dA", "dB", "dC", "dD", "ddelta_bias"), g, gr):
        if b is None:
            continue
        assert_close(a, b, "selective_scan", dtype, "bwd", f"{what} {name}")


CHUNK_CASES = [
    pytest.param((2, 4, 3, 16, 300), id="B2-K4-G3-N16-L300"),
    pytest.param((1, 2, 5, 7, 200), id="B1-K2-G5-N7-L200"),
]
if DEVICE == "cuda" and not INTERPRETED:
    CHUNK_CASES += [pytest.param((1, 4, 64, 16, 3001), id="B1-K4-G64-N16-L3001")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", CHUNK_CASES)
def test_triton_chunked(case, dtype, monkeypatch):
    """The triton kernels with L cut into chunks (summary pass, carry pass, main pass), forward and
    backward, on shapes small enough that the automatic split would not cut them."""
    if _backend._load("triton") is not None:
        pytest.skip(f"triton backend unavailable: {_backend._load('triton')}")
    from mambaic_kernels.triton import selective_scan as ts

    monkeypatch.setattr(ts, "_MIN_CHUNK_TILES", 1)
    monkeypatch.setattr(ts, "_FWD_PROGRAMS_PER_SM", 10_000)
    monkeypatch.setattr(ts, "_BWD_PROGRAMS_PER_SM", 10_000)
    batch, K, G, N, L = case
    n_chunks, _ = ts._chunking(batch, K * G, L, ts._BWD_TILES, torch.device(DEVICE), 10_000)
    assert n_chunks > 2, "the case must cross several chunks"
    flags = dict(softplus=True, D=True, bias=True)
    inputs64 = make_inputs(*case, flags)
    low = [leaf(t, dtype if i in (0, 1, 3, 4) else torch.float32) for i, t in enumerate(inputs64)]
    with mk.use_backend("triton"):
        out = mk.selective_scan(*low[:5], low[5], delta_bias=low[6], delta_softplus=True)
    ref_in = [leaf(t.detach(), torch.float64) for t in low]
    expected = reference.selective_scan(*ref_in, True)
    what = f"triton selective_scan, {n_chunks} chunks, {case}"
    assert_close(out, expected, "selective_scan", dtype, "fwd", what)
    dout = torch.randn_like(expected)
    for name, a, b in zip(("du", "ddelta", "dA", "dB", "dC", "dD", "ddelta_bias"),
                          grads(out, low, dout.to(dtype)), grads(expected, ref_in, dout.to(dtype).double())):
        assert_close(a, b, "selective_scan", dtype, "bwd", f"{what} {name}")


def test_bad_inputs():
    u, delta, A, B, C, D, bias = (t.float() if t is not None else None
                                  for t in make_inputs(2, 4, 2, 4, 10, dict(softplus=True, D=True, bias=True), "cpu"))
    with pytest.raises(ValueError, match=r"selective_scan: delta must have shape \(2, 8, 10\) \(the shape of u\), got \(2, 8, 9\)"):
        mk.selective_scan(u, delta[..., :9].contiguous(), A, B, C)
    with pytest.raises(ValueError, match=r"A must have shape \(KD, N\) = \(8, N\)"):
        mk.selective_scan(u, delta, A[:4], B, C)
    with pytest.raises(ValueError, match="must divide KD = 8"):
        mk.selective_scan(u, delta, A, torch.randn(2, 3, 4, 10), torch.randn(2, 3, 4, 10))
    with pytest.raises(TypeError, match="selective_scan: B must have u's dtype torch.float32, got torch.float16"):
        mk.selective_scan(u, delta, A, B.half(), C)
    with pytest.raises(ValueError, match="selective_scan: u must be contiguous"):
        mk.selective_scan(u.transpose(0, 1).contiguous().transpose(0, 1), delta, A, B, C)
    with pytest.raises(ValueError, match=r"D must have shape \(8,\)"):
        mk.selective_scan(u, delta, A, B, C, D[:3])
