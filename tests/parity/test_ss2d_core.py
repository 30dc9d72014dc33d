"""ss2d_core: reference vs an explicit per-direction loop, gradcheck, every backend vs the reference."""

import pytest
import torch

import mambaic_kernels as mk
from mambaic_kernels import reference
from mambaic_kernels.reference.cross_scan import scan_orders

from mambaic_kernels import _backend

from .conftest import DEVICE, INTERPRETED, require
from .helpers import assert_close, check_low_precision, grads, leaf

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
WEIGHTS = ("x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds")

# (batch, dim, H, W, N, R): odd sizes, H != W, a single row and a single column, batch 1 and 3
CASES = [
    pytest.param((2, 6, 5, 7, 4, 2), id="B2-D6-H5-W7-N4-R2"),
    pytest.param((1, 3, 1, 9, 16, 1), id="B1-D3-H1-W9-N16-R1"),
    pytest.param((3, 4, 6, 1, 3, 2), id="B3-D4-H6-W1-N3-R2"),
    pytest.param((2, 8, 4, 4, 16, 3), id="B2-D8-H4-W4-N16-R3"),
]
if DEVICE == "cuda" and not INTERPRETED:
    # past the kernels' tile and chunk sizes (L = 1357), with the model's d_state
    CASES += [pytest.param((2, 40, 23, 59, 16, 5), id="B2-D40-H23-W59-N16-R5"),
              # L = 1560, a multiple of 4 (the cuda kernel's 16-byte path), the model's R for dim 512
              pytest.param((2, 16, 24, 65, 16, 16), id="B2-D16-H24-W65-N16-R16")]


def make_inputs(batch, dim, H, W, N, R, device=DEVICE):
    """u and SS2D weights in float64, in the ranges of the official initialisation."""
    f = dict(dtype=torch.float64, device=device)
    u = torch.randn(batch, dim, H, W, **f)
    w = dict(
        x_proj_weight=torch.randn(4, R + 2 * N, dim, **f) / dim**0.5,
        dt_projs_weight=torch.randn(4, dim, R, **f) / R**0.5,
        dt_projs_bias=torch.randn(4, dim, **f) * 0.5 - 2.0,  # softplus(bias) ~ dt in [1e-3, 0.1]
        A_logs=torch.log(torch.arange(1, N + 1, **f)).repeat(4 * dim, 1) + torch.randn(4 * dim, N, **f) * 0.1,
        Ds=torch.randn(4 * dim, **f),
    )
    return u, w


def per_direction_loop(u, w):
    """Each direction through the reference scan, positions gathered and scattered by index."""
    batch, dim, H, W = u.shape
    R, N = w["dt_projs_weight"].shape[2], w["A_logs"].shape[1]
    flat = u.reshape(batch, dim, H * W)
    out = torch.zeros_like(flat)
    order = scan_orders(H, W, u.device)
    for k in range(4):
        xs = flat[:, :, order[k]]  # (batch, dim, L) in direction k's order
        dbl = torch.einsum("cd,bdl->bcl", w["x_proj_weight"][k], xs)
        delta = torch.einsum("dr,brl->bdl", w["dt_projs_weight"][k], dbl[:, :R])
        y = reference.selective_scan(
            xs, delta, -torch.exp(w["A_logs"].view(4, dim, N)[k]), dbl[:, None, R : R + N], dbl[:, None, R + N :],
            w["Ds"].view(4, dim)[k], delta_bias=w["dt_projs_bias"][k], delta_softplus=True,
        )  # fmt: skip
        out[:, :, order[k]] += y
    return out.permute(0, 2, 1).reshape(batch, H, W, dim)


@pytest.mark.parametrize("case", [(2, 3, 3, 4, 2, 1), (1, 2, 1, 5, 3, 2)], ids=["B2-D3-H3-W4", "B1-D2-H1-W5"])
def test_reference_matches_per_direction_loop(case):
    u, w = make_inputs(*case, device="cpu")
    torch.testing.assert_close(reference.ss2d_core(u, **w), per_direction_loop(u, w))


def test_reference_gradcheck():
    u, w = make_inputs(2, 3, 3, 2, 2, 1, device="cpu")
    inputs = [leaf(u)] + [leaf(w[name]) for name in WEIGHTS]
    assert torch.autograd.gradcheck(lambda *a: reference.ss2d_core(*a), inputs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES)
def test_ss2d_core_backend(backend, case, dtype):
    u64, w64 = make_inputs(*case)
    # u in the tested dtype; the weights float32, as the model's parameters
    u = leaf(u64, dtype)
    w = {name: leaf(t, torch.float32) for name, t in w64.items()}
    require("ss2d_core", backend, u, d_state=case[4])
    with mk.use_backend(backend):
        out = mk.ss2d_core(u, **w)
    ref_u = leaf(u.detach(), torch.float64)
    ref_w = {name: leaf(t.detach(), torch.float64) for name, t in w.items()}
    expected = reference.ss2d_core(ref_u, **ref_w)
    what = f"{backend} ss2d_core {case}"
    assert out.dtype == dtype and out.shape == expected.shape
    assert_close(out, expected, "ss2d_core", dtype, "fwd", what)
    check_low_precision(out, reference.ss2d_core(u.detach(), **{n: t.detach() for n, t in w.items()}),
                        expected, "ss2d_core", dtype, "fwd", what)
    dout = torch.randn_like(expected)
    got = grads(out, [u, *w.values()], dout.to(dtype))
    want = grads(expected, [ref_u, *ref_w.values()], dout.to(dtype).double())
    for name, a, b in zip(("du", *(f"d{n}" for n in WEIGHTS)), got, want):
        assert_close(a, b, "ss2d_core", dtype, "bwd", f"{what} {name}")


@pytest.mark.parametrize("case", CASES)
def test_cuda_backward_from_the_forwards_tile_states(case, monkeypatch):
    """Under autograd the cuda core's forward saves every direction's tile states (SAVE_TILE_STATES in
    kernels/cuda/ss2d_core.py) and its backward starts from them instead of running the
    scans again: the output keeps its bits, the gradients are the reference's."""
    u64, w64 = make_inputs(*case)
    u = leaf(u64, torch.float32)
    w = {name: leaf(t, torch.float32) for name, t in w64.items()}
    require("ss2d_core", "cuda", u, d_state=case[4])
    from types import SimpleNamespace

    from mambaic_kernels.cuda import ss2d_core as cuda_core

    dout = torch.randn(u.shape[0], *u.shape[2:], u.shape[1], dtype=torch.float64, device=u.device)
    outs = []
    for save in (False, True):
        monkeypatch.setattr(cuda_core, "SAVE_TILE_STATES", save)
        with mk.use_backend("cuda"):
            outs.append(mk.ss2d_core(u, **w))
    ext = cuda_core._ext

    def no_recompute(*args):
        raise AssertionError("the backward ran the scans again although the forward saved its tile states")

    monkeypatch.setattr(cuda_core, "_ext", SimpleNamespace(
        transpose=ext.transpose, ss2d_fwd=ext.ss2d_fwd, ss2d_pair_bwd=ext.ss2d_pair_bwd, ss2d_pair_states=no_recompute))
    got = grads(outs[1], [u, *w.values()], dout.float())
    assert torch.equal(outs[0], outs[1]), "saving the tile states changed the forward's output"
    ref_u = leaf(u.detach(), torch.float64)
    ref_w = {name: leaf(t.detach(), torch.float64) for name, t in w.items()}
    want = grads(reference.ss2d_core(ref_u, **ref_w), [ref_u, *ref_w.values()], dout)
    for name, a, b in zip(("du", *(f"d{n}" for n in WEIGHTS)), got, want):
        assert_close(a, b, "ss2d_core", torch.float32, "bwd", f"cuda {case} {name}, from saved tile states")


def test_deterministic_forward(backend):
    """Two runs give the same bits: the entropy decoder recomputes what the encoder computed."""
    u64, w64 = make_inputs(2, 8, 6, 5, 16, 2)
    u, w = u64.float(), {n: t.float() for n, t in w64.items()}
    require("ss2d_core", backend, u, d_state=16)
    with mk.use_backend(backend):
        assert torch.equal(mk.ss2d_core(u, **w), mk.ss2d_core(u, **w))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_autocast_computes_in_float32(backend, dtype):
    """Under autocast (bf16 training) every backend gives what it gives outside it: the op's own
    x_proj stays float32, gradients included."""
    u64, w64 = make_inputs(2, 8, 6, 5, 16, 2)
    u = leaf(u64, dtype)
    w = {n: leaf(t, torch.float32) for n, t in w64.items()}
    require("ss2d_core", backend, u, d_state=16)
    dout = torch.randn(2, 6, 5, 8, device=u.device, dtype=dtype)
    with mk.use_backend(backend):
        plain = mk.ss2d_core(u, **w)
        plain_grads = grads(plain, [u, *w.values()], dout)
        with torch.autocast(u.device.type, dtype=dtype):
            auto = mk.ss2d_core(u, **w)
        auto_grads = grads(auto, [u, *w.values()], dout)
    assert auto.dtype == dtype
    torch.testing.assert_close(auto, plain, rtol=0, atol=0)
    for name, a, b in zip(("du", *(f"d{n}" for n in WEIGHTS)), auto_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


SS2D_CHUNK_CASES = [pytest.param((2, 5, 9, 13, 4, 2), id="B2-D5-H9-W13-N4-R2")]
if DEVICE == "cuda" and not INTERPRETED:
    SS2D_CHUNK_CASES += [pytest.param((2, 40, 61, 53, 16, 5), id="B2-D40-H61-W53-N16-R5")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", SS2D_CHUNK_CASES)
def test_triton_fused_chunked(case, dtype):
    """The fused triton core with each direction's L cut into chunks (summary, carry and main
    passes, the reversed directions included), with delta from the matmul and in registers,
    against the reference."""
    if _backend._load("triton") is not None:
        pytest.skip(f"triton backend unavailable: {_backend._load('triton')}")
    u64, w64 = make_inputs(*case)
    u = u64.to(dtype)
    w = {n: t.float() for n, t in w64.items()}
    require("ss2d_core", "triton", u, d_state=case[4])
    args = (u, *w.values())
    expected = reference.ss2d_core(u.double(), **{n: t.double() for n, t in w.items()})
    for n_chunks, in_registers in ((1, False), (3, False), (1, True), (3, True)):
        out = torch.ops.mambaic.ss2d_core_fwd_triton(*args, n_chunks, in_registers)
        where = "in registers" if in_registers else "from a matmul"
        assert_close(out, expected, "ss2d_core", dtype, "fwd", f"triton ss2d_core, {n_chunks} chunks, delta {where}, {case}")


@pytest.mark.parametrize("case", [(2, 5, 17, 19, 16, 2), (1, 3, 29, 11, 4, 1)], ids=["N16-L323", "N4-L319"])
def test_cpu_fused_across_chunks(case):
    """The cpu backend's fused core on sequences longer than its C++ chunk of 256 steps (the
    reversed directions cross chunk boundaries backwards), forward and gradients."""
    if DEVICE != "cpu":
        pytest.skip("cpu backend: takes CPU tensors; this run's tensors are on cuda")
    if _backend._load("cpu") is not None:
        pytest.skip(f"cpu backend unavailable: {_backend._load('cpu')}")
    u64, w64 = make_inputs(*case)
    u = leaf(u64, torch.float32)
    w = {name: leaf(t, torch.float32) for name, t in w64.items()}
    with mk.use_backend("cpu"):
        out = mk.ss2d_core(u, **w)
    ref_u = leaf(u.detach(), torch.float64)
    ref_w = {name: leaf(t.detach(), torch.float64) for name, t in w.items()}
    expected = reference.ss2d_core(ref_u, **ref_w)
    assert_close(out, expected, "ss2d_core", torch.float32, "fwd", f"cpu ss2d_core {case}")
    dout = torch.randn_like(expected)
    got = grads(out, [u, *w.values()], dout.float())
    want = grads(expected, [ref_u, *ref_w.values()], dout)
    for name, a, b in zip(("du", *(f"d{n}" for n in WEIGHTS)), got, want):
        assert_close(a, b, "ss2d_core", torch.float32, "bwd", f"cpu ss2d_core {case} {name}")


def test_triton_fused_keeps_no_four_direction_tensor(monkeypatch):
    """The fused forward allocates nothing with 4 x dim x L elements (the stacked directions)."""
    if not INTERPRETED:
        pytest.skip("watches the launcher's allocations with a dispatch mode, which compiled launches do not "
                    "go through; on the GPU bench/latency.py's peak memory shows it")
    if _backend._load("triton") is not None:
        pytest.skip(f"triton backend unavailable: {_backend._load('triton')}")
    batch, dim, H, W, N, R = 1, 6, 5, 7, 4, 2
    u64, w64 = make_inputs(batch, dim, H, W, N, R)
    u, w = u64.float(), {n: t.float() for n, t in w64.items()}
    sizes = []
    from torch.utils._python_dispatch import TorchDispatchMode

    class Allocations(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            # floating tensors only: the interpreter moves the kernels' arguments as byte tensors
            sizes.extend(t.numel() for t in (out if isinstance(out, (tuple, list)) else (out,))
                         if isinstance(t, torch.Tensor) and t.is_floating_point())  # fmt: skip
            return out

    from mambaic_kernels.triton.ss2d_core import _ss2d_core_fwd

    with torch.no_grad(), Allocations():
        _ss2d_core_fwd(u, *w.values(), 2, False)
    assert dim * H * W in sizes, "the accumulators' allocation was not seen"
    assert max(sizes) < 4 * dim * H * W, f"a tensor of {max(sizes)} elements (4 x dim x L = {4 * dim * H * W})"


def test_bad_inputs():
    u64, w64 = make_inputs(2, 4, 3, 5, 4, 2, device="cpu")
    u, w = u64.float(), {n: t.float() for n, t in w64.items()}
    with pytest.raises(ValueError, match=r"ss2d_core: u must be 4-D, got shape \(2, 4, 15\)"):
        mk.ss2d_core(u.reshape(2, 4, 15), **w)
    with pytest.raises(ValueError, match=r"x_proj_weight must have 4 scan directions in dim 0"):
        mk.ss2d_core(u, **{**w, "x_proj_weight": w["x_proj_weight"][:2].contiguous()})
    with pytest.raises(ValueError, match=r"x_proj_weight must have shape \(4, 10, 4\) \(\(4, R \+ 2N, dim\)\), got \(4, 10, 5\)"):
        mk.ss2d_core(u, **{**w, "x_proj_weight": torch.randn(4, 10, 5)})
    with pytest.raises(ValueError, match=r"A_logs must have shape \(16, 4\)"):
        mk.ss2d_core(u, **{**w, "A_logs": w["A_logs"][:8].contiguous()})
    with pytest.raises(ValueError, match=r"must hold R = 2 \(dt_projs_weight's rank\) plus 2N states"):
        mk.ss2d_core(u, **{**w, "x_proj_weight": torch.randn(4, 7, 4)})
    with pytest.raises(ValueError, match="ss2d_core: u must be contiguous"):
        mk.ss2d_core(u.transpose(2, 3), **w)
    with pytest.raises(TypeError, match="ss2d_core: Ds must have a floating dtype"):
        mk.ss2d_core(u, **{**w, "Ds": torch.ones(16, dtype=torch.int64)})
