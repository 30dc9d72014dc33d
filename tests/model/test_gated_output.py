"""SS2D's tail as one autograd function (mambaic/layers/gated_output.py): the plain modules' output
bit for bit, their gradients, and two maps kept for the backward instead of five."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaic.layers.gated_output import GatedOutput, gated_output
from mambaic.layers import ss2d
from mambaic.layers.ss2d import SS2D


def _tail(channels=12, out=5, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    norm, proj = nn.LayerNorm(channels).to(dtype), nn.Linear(channels, out, bias=False).to(dtype)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    y = torch.randn(2, 3, 7, channels, dtype=dtype, requires_grad=True)
    zp = torch.randn(2, 3, 7, channels, dtype=dtype, requires_grad=True)
    return y, zp, norm, proj


def test_gradcheck():
    y, zp, norm, proj = _tail(dtype=torch.float64)
    fn = lambda y, zp, w, b, pw: GatedOutput.apply(y, zp, w, b, norm.eps, pw)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (y, zp, norm.weight, norm.bias, proj.weight))


def test_plain_modules_output_bit_for_bit_and_their_gradients():
    y, zp, norm, proj = _tail()
    leaves = [y, zp, norm.weight, norm.bias, proj.weight]
    plain = proj(norm(y) * F.silu(zp))
    fused = gated_output(y, zp, norm, proj)
    assert torch.equal(plain, fused)
    dout = torch.randn_like(plain)
    want = torch.autograd.grad(plain, leaves, dout)
    got = torch.autograd.grad(fused, leaves, dout)
    for name, g, w in zip(("y", "zp", "norm.weight", "norm.bias", "proj.weight"), got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6, msg=lambda m: f"d{name}: {m}")


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


def test_keeps_two_maps_instead_of_five():
    y, zp, norm, proj = _tail()
    assert _saved_maps(lambda: proj(norm(y) * F.silu(zp)), y) == 5
    assert _saved_maps(lambda: gated_output(y, zp, norm, proj), y) == 2


def test_ss2d_takes_it_under_autograd_only_and_agrees_with_the_plain_tail(monkeypatch):
    torch.manual_seed(0)
    layer = SS2D(d_model=8, d_state=4, ssm_ratio=2.0)
    x = torch.randn(2, 5, 6, 8, requires_grad=True)
    with torch.no_grad():
        without_grad = layer(x)
    taken = []
    monkeypatch.setattr(ss2d, "gated_output", lambda *a: taken.append(1) or gated_output(*a))
    out = layer(x)
    assert taken and torch.equal(out, without_grad)  # the fused tail and the in-place inference path: same bits
    monkeypatch.setattr(ss2d, "gated_output", lambda y, zp, norm, proj: proj(norm(y) * F.silu(zp)))
    plain = layer(x)
    dout = torch.randn_like(out)
    params = [x, *layer.parameters()]
    for g, w in zip(torch.autograd.grad(out, params, dout), torch.autograd.grad(plain, params, dout)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
