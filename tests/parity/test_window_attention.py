"""window_attention: reference vs naive per-window loops, gradcheck, every backend vs the reference."""

import math

import pytest
import torch

import mambaic_kernels as mk
from mambaic_kernels import reference

from .conftest import DEVICE, INTERPRETED, require
from .helpers import assert_close, check_low_precision, grads, leaf

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (batch, H, W, heads, head_dim, window)
CASES = [
    pytest.param((2, 8, 8, 2, 16, 8), id="B2-single_window-h2-d16"),
    pytest.param((2, 16, 24, 2, 16, 8), id="B2-H16-W24-h2-d16"),
    pytest.param((1, 24, 8, 1, 32, 8), id="B1-H24-W8-h1-d32"),
    pytest.param((3, 8, 16, 2, 16, 8), id="B3-H8-W16-h2-d16"),
]
if DEVICE == "cuda" and not INTERPRETED:
    CASES += [pytest.param((2, 96, 128, 8, 16, 8), id="B2-96x128-h8-d16")]


def naive_window_attention(qkv, table, heads, window, shifted):
    """Explicit loops over windows, heads and token pairs, float64; mask from the official rule."""
    Bn, H, W, C3 = qkv.shape
    dim = C3 // 3
    hd = dim // heads
    s = window - window // 2
    shift = window // 2 if shifted else 0
    nr, nc = H // window, W // window
    out = torch.zeros(Bn, H, W, dim, dtype=torch.float64)
    for b in range(Bn):
        for wr in range(nr):
            for wc in range(nc):
                # token t of the window sits at shifted-map position (wr*w + i, wc*w + j),
                # i.e. original position ((wr*w + i + shift) % H, (wc*w + j + shift) % W)
                pos = [((wr * window + i + shift) % H, (wc * window + j + shift) % W)
                       for i in range(window) for j in range(window)]
                for h in range(heads):
                    q = torch.stack([qkv[b, r, c, h * hd:(h + 1) * hd] for r, c in pos])
                    k = torch.stack([qkv[b, r, c, dim + h * hd:dim + (h + 1) * hd] for r, c in pos])
                    v = torch.stack([qkv[b, r, c, 2 * dim + h * hd:2 * dim + (h + 1) * hd] for r, c in pos])
                    logits = torch.empty(window * window, window * window, dtype=torch.float64)
                    for p in range(window * window):
                        for t in range(window * window):
                            pi, pj, ti, tj = p // window, p % window, t // window, t % window
                            val = (q[p] @ k[t]) / math.sqrt(hd) + table[h, pi - ti + window - 1, pj - tj + window - 1]
                            masked = shifted and (
                                (wr == nr - 1 and (pi < s) != (ti < s)) or (wc == nc - 1 and (pj < s) != (tj < s))
                            )
                            logits[p, t] = float("-inf") if masked else val
                    o = logits.softmax(-1) @ v
                    for p, (r, c) in enumerate(pos):
                        out[b, r, c, h * hd:(h + 1) * hd] = o[p]
    return out


@pytest.mark.parametrize("shifted", [False, True], ids=["plain", "shifted"])
@pytest.mark.parametrize("case", [(2, 8, 8, 2, 4, 4), (1, 8, 12, 2, 4, 4), (1, 16, 8, 1, 8, 8)],
                         ids=["single_window", "2x3_windows", "2x1_windows_w8"])
def test_reference_matches_naive(case, shifted):
    Bn, H, W, heads, hd, window = case
    qkv = torch.randn(Bn, H, W, 3 * heads * hd, dtype=torch.float64)
    table = torch.randn(heads, 2 * window - 1, 2 * window - 1, dtype=torch.float64)
    torch.testing.assert_close(
        reference.window_attention(qkv, table, heads, window, shifted),
        naive_window_attention(qkv, table, heads, window, shifted),
    )


@pytest.mark.parametrize("shifted", [False, True], ids=["plain", "shifted"])
def test_reference_gradcheck(shifted):
    qkv = torch.randn(1, 8, 8, 3 * 2 * 2, dtype=torch.float64, requires_grad=True)
    table = torch.randn(2, 7, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: reference.window_attention(a, b, 2, 4, shifted), (qkv, table))


@pytest.mark.parametrize("shifted", [False, True], ids=["plain", "shifted"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES)
def test_window_attention_backend(backend, case, dtype, shifted):
    check_backend(backend, case, dtype, shifted)


# Every window size and head size the cuda kernels take, where their padding to 64 tokens and to
# whole 8-channel tensor-core steps shows: (batch, H, W, heads, head_dim, window), H != W.
TENSOR_CORE_CASES = [
    pytest.param((2, 16, 24, 2, 16, 8), id="B2-H16-W24-h2-d16-w8"),
    pytest.param((1, 14, 21, 3, 12, 7), id="B1-H14-W21-h3-d12-w7"),
    pytest.param((2, 10, 15, 2, 17, 5), id="B2-H10-W15-h2-d17-w5"),
    pytest.param((1, 6, 9, 1, 3, 3), id="B1-H6-W9-h1-d3-w3"),
    pytest.param((2, 4, 6, 2, 32, 2), id="B2-H4-W6-h2-d32-w2"),
    pytest.param((1, 3, 2, 2, 8, 1), id="B1-H3-W2-h2-d8-w1"),
]


@pytest.mark.parametrize("shifted", [False, True], ids=["plain", "shifted"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", TENSOR_CORE_CASES)
def test_cuda_tensor_core_kernels(case, dtype, shifted):
    if DEVICE != "cuda":
        pytest.skip("the cuda kernels take CUDA tensors; this run's tensors are on the CPU")
    require("window_attention", "cuda", torch.empty(1, device=DEVICE, dtype=dtype), window=case[5], head_dim=case[4])
    check_backend("cuda", case, dtype, shifted)


def check_backend(backend, case, dtype, shifted):
    """One backend's forward and both gradients against the float64 reference."""
    Bn, H, W, heads, hd, window = case
    qkv = leaf(torch.randn(Bn, H, W, 3 * heads * hd, dtype=torch.float64, device=DEVICE), dtype)
    table = leaf(torch.randn(heads, 2 * window - 1, 2 * window - 1, device=DEVICE, dtype=torch.float64), dtype)
    require("window_attention", backend, qkv, window=window, head_dim=hd)
    with mk.use_backend(backend):
        out = mk.window_attention(qkv, table, heads, window, shifted=shifted)
    qr, tr = leaf(qkv.detach(), torch.float64), leaf(table.detach(), torch.float64)
    expected = reference.window_attention(qr, tr, heads, window, shifted)
    what = f"{backend} window_attention {case} shifted={shifted}"
    assert out.dtype == dtype
    assert_close(out, expected, "window_attention", dtype, "fwd", what)
    check_low_precision(out, reference.window_attention(qkv.detach(), table.detach(), heads, window, shifted),
                        expected, "window_attention", dtype, "fwd", what)
    dout = torch.randn_like(expected)
    g = grads(out, [qkv, table], dout.to(dtype))
    gr = grads(expected, [qr, tr], dout.to(dtype).double())
    for name, a, b in zip(("dqkv", "drel_pos_bias"), g, gr):
        assert_close(a, b, "window_attention", dtype, "bwd", f"{what} {name}")


def test_bad_inputs():
    table = torch.randn(2, 15, 15)
    with pytest.raises(ValueError, match="multiples of window=8, got H=12, W=16"):
        mk.window_attention(torch.randn(1, 12, 16, 96), table, 2)
    with pytest.raises(ValueError, match=r"rel_pos_bias must have shape \(2, 15, 15\)"):
        mk.window_attention(torch.randn(1, 8, 8, 96), torch.randn(2, 7, 7), 2)
    with pytest.raises(ValueError, match="last dim must be 3 \\* heads"):
        mk.window_attention(torch.randn(1, 8, 8, 100), table, 2)
    with pytest.raises(ValueError, match="heads must be a positive int, got 0"):
        mk.window_attention(torch.randn(1, 8, 8, 96), table, 0)
