"""SS2D's steps as autograd functions that keep fewer maps (mambaic/layers/ss2d_autograd.py): the
plain modules' outputs bit for bit, their gradients, and the maps kept for the backward."""

import torch
import torch.nn as nn
import torch.nn.functional as F

import contextlib
import gc
import weakref

from mambaic.layers.ss2d_autograd import ConvSilu, GatedOutput, conv_silu, core_recomputes_input, gated_output
from mambaic.layers import ss2d
from mambaic.layers.ss2d import SS2D


def _tail(channels=12, d_model=6, out=5, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    norm, proj = nn.LayerNorm(channels).to(dtype), nn.Linear(channels, out, bias=False).to(dtype)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    y = torch.randn(2, 3, 7, channels, dtype=dtype, requires_grad=True)
    h = torch.randn(2, 3, 7, d_model, dtype=dtype, requires_grad=True)
    z_weight = (torch.randn(channels, d_model, dtype=dtype) / d_model**0.5).requires_grad_()
    return y, h, z_weight, norm, proj


def _plain_tail(y, h, z_weight, norm, proj):
    return proj(norm(y) * F.silu(F.linear(h, z_weight)))


def test_gradcheck():
    y, h, z_weight, norm, proj = _tail(dtype=torch.float64)
    fn = lambda y, h, zw, w, b, pw: GatedOutput.apply(y, h, zw, w, b, norm.eps, pw)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (y, h, z_weight, norm.weight, norm.bias, proj.weight))


def test_plain_modules_output_bit_for_bit_and_their_gradients():
    y, h, z_weight, norm, proj = _tail()
    leaves = [y, h, z_weight, norm.weight, norm.bias, proj.weight]
    plain = _plain_tail(y, h, z_weight, norm, proj)
    fused = gated_output(y, h, z_weight, norm, proj)
    assert torch.equal(plain, fused)
    dout = torch.randn_like(plain)
    want = torch.autograd.grad(plain, leaves, dout)
    got = torch.autograd.grad(fused, leaves, dout)
    for name, g, w in zip(("y", "h", "z_weight", "norm.weight", "norm.bias", "proj.weight"), got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6, msg=lambda m: f"d{name}: {m}")
    # some gradients not asked for: the others unchanged
    for subset in ([y], [h], [z_weight, proj.weight]):
        got = torch.autograd.grad(gated_output(y, h, z_weight, norm, proj), subset, dout)
        for g, w in zip(got, torch.autograd.grad(_plain_tail(y, h, z_weight, norm, proj), subset, dout)):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def _saved_maps(fn, like: torch.Tensor) -> int:
    """How many distinct maps of ``like``'s size autograd keeps for the backward of fn() (any view)."""
    kept = set()

    def pack(t):
        if t.numel() == like.numel():
            kept.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return len(kept)


def test_keeps_one_map_of_d_inner_and_the_input_instead_of_five():
    y, h, z_weight, norm, proj = _tail()
    assert _saved_maps(lambda: _plain_tail(y, h, z_weight, norm, proj), y) == 5  # y, norm(y), zp, silu(zp), the product
    assert _saved_maps(lambda: gated_output(y, h, z_weight, norm, proj), y) == 1
    assert _saved_maps(lambda: gated_output(y, h, z_weight, norm, proj), h) == 1  # SS2D keeps h for u anyway


def _conv(channels=6, seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=True)
    return conv, torch.randn(2, channels, 5, 7, requires_grad=True)


def test_conv_silu_gradcheck():
    conv, u0 = _conv()
    conv, u0 = conv.double(), u0.detach().double().requires_grad_()
    fn = lambda u, w, b: ConvSilu.apply(u, w, b, 1, conv.groups)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (u0, conv.weight, conv.bias))


def test_conv_silu_is_the_plain_calls_and_keeps_one_map_instead_of_two():
    conv, u0 = _conv()
    plain, lean = F.silu(conv(u0)), conv_silu(u0, conv)
    assert torch.equal(plain, lean)
    dout = torch.randn_like(plain)
    leaves = [u0, conv.weight, conv.bias]
    for g, w in zip(torch.autograd.grad(lean, leaves, dout), torch.autograd.grad(plain, leaves, dout)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    assert _saved_maps(lambda: F.silu(conv(u0)), u0) == 2
    assert _saved_maps(lambda: conv_silu(u0, conv), u0) == 1
    (g_u0,) = torch.autograd.grad(conv_silu(u0, conv), [u0], dout)  # the parameters' gradients not asked for
    torch.testing.assert_close(g_u0, torch.autograd.grad(F.silu(conv(u0)), [u0], dout)[0], rtol=1e-5, atol=1e-6)


def test_core_recomputes_input_keeps_a_recipe_and_rebuilds_the_same_bits():
    conv, u0 = _conv()
    seen = []

    class Core(torch.autograd.Function):  # a core that saves its input, as every backend's does
        @staticmethod
        def forward(ctx, u, other):
            ctx.save_for_backward(u, other)
            return u * u + other

        @staticmethod
        def backward(ctx, grad):
            u, other = ctx.saved_tensors
            seen.append((u, other))
            return 2 * u * grad, grad

    u = conv_silu(u0, conv)
    want_u = u.detach().clone()
    other = torch.randn_like(u)
    outer_packed, outer_unpacked = [], []  # enclosing hooks (save_on_cpu, a census) still see the rest

    def outer_pack(t):
        outer_packed.append(t)
        return ("outer", t)

    def outer_unpack(saved):
        outer_unpacked.append(saved[1])
        return saved[1]

    with torch.autograd.graph.saved_tensors_hooks(outer_pack, outer_unpack):
        with core_recomputes_input(u0, u, conv):
            out = Core.apply(u, other)
    assert [t is other for t in outer_packed] == [True], "the enclosing hooks got u, or not the other tensor"
    gone = weakref.ref(u)
    del u
    gc.collect()
    assert gone() is None, "the core's saved copy of u was kept"
    dout = torch.randn_like(out)
    got = torch.autograd.grad(out, [u0, conv.weight, conv.bias], dout)
    assert torch.equal(seen[0][0], want_u) and seen[0][1] is other  # u rebuilt bit for bit; the rest as saved
    assert len(outer_unpacked) == 1 and outer_unpacked[0] is other
    u = F.silu(conv(u0))
    want = torch.autograd.grad(u * u + other, [u0, conv.weight, conv.bias], dout)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_ss2d_takes_them_under_autograd_only_and_agrees_with_the_plain_calls(monkeypatch):
    torch.manual_seed(0)
    layer = SS2D(d_model=8, d_state=4, ssm_ratio=2.0)
    x = torch.randn(2, 5, 6, 8, requires_grad=True)
    with torch.no_grad():
        without_grad = layer(x)
    taken = []
    monkeypatch.setattr(ss2d, "gated_output", lambda *a: taken.append("tail") or gated_output(*a))
    monkeypatch.setattr(ss2d, "conv_silu", lambda *a: taken.append("conv") or conv_silu(*a))
    monkeypatch.setattr(ss2d, "core_recomputes_input", lambda *a: taken.append("core") or core_recomputes_input(*a))
    out = layer(x)
    assert taken == ["conv", "core", "tail"] and torch.equal(out, without_grad)  # and the in-place inference path: same bits
    monkeypatch.setattr(ss2d, "gated_output", _plain_tail)
    monkeypatch.setattr(ss2d, "conv_silu", lambda u0, conv: F.silu(conv(u0)))
    monkeypatch.setattr(ss2d, "core_recomputes_input", lambda *a: contextlib.nullcontext())
    plain = layer(x)
    dout = torch.randn_like(out)
    params = [x, *layer.parameters()]
    for g, w in zip(torch.autograd.grad(out, params, dout), torch.autograd.grad(plain, params, dout)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_ss2d_rebuilds_its_normalised_input_for_the_backward(monkeypatch):
    """With the block's norm passed in, SS2D keeps x (the norm does) but not h = norm(x): the u
    matmul and the tail get it computed again; the gradients are those of keeping it."""
    torch.manual_seed(0)
    layer, norm = SS2D(d_model=8, d_state=4, ssm_ratio=2.0), nn.LayerNorm(8)
    x = torch.randn(2, 5, 6, 8, requires_grad=True)
    params = [x, *layer.parameters(), *norm.parameters()]

    def run():
        kept = set()

        def pack(t):  # the storages of input-sized maps kept for the backward
            if t.numel() == x.numel():
                kept.add(t.untyped_storage().data_ptr())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = layer(x, norm)
        return out, len(kept)

    out, kept = run()
    dout = torch.randn_like(out)
    got = torch.autograd.grad(out, params, dout)
    monkeypatch.setattr(ss2d, "recomputed_when_saved", lambda *targets: contextlib.nullcontext())
    plain, kept_plain = run()
    assert torch.equal(out, plain)
    assert (kept, kept_plain) == (1, 2), "x alone should be kept, not h = norm(x) as well"
    for g, w in zip(got, torch.autograd.grad(plain, params, dout)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
