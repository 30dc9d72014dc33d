"""MambaIC's forward contract, its input checks, the checkerboard, and the operator routing."""

import pytest
import torch

import mambaic
import mambaic_kernels
from mambaic.layers import CheckerboardMaskedConv2d
from mambaic.models import checkerboard as cb

from .conftest import TINY


def test_forward_contract_and_training_step(tiny):
    x = torch.rand(1, 3, 128, 256)
    tiny.train()
    try:
        out = tiny(x)
        assert out["x_hat"].shape == x.shape
        assert out["likelihoods"]["y"].shape == (1, TINY["M"], 8, 16)
        assert out["likelihoods"]["z"].shape == (1, TINY["z_channels"], 2, 4)
        for name, lik in out["likelihoods"].items():
            assert ((lik > 0) & (lik <= 1)).all(), name
        loss = (out["x_hat"] - x).square().mean() - sum(l.log2().mean() for l in out["likelihoods"].values())
        loss.backward()
        grads = [p.grad for p in tiny.g_a.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert isinstance(tiny.aux_loss(), torch.Tensor)
    finally:
        tiny.zero_grad(set_to_none=True)
        tiny.eval()


def test_eval_forward_is_deterministic(tiny):
    x = torch.rand(1, 3, 128, 128)  # latent of one 8x8 window: the official code fails here
    with torch.no_grad():
        a, b = tiny(x), tiny(x)
    assert torch.equal(a["x_hat"], b["x_hat"])
    assert torch.equal(a["likelihoods"]["y"], b["likelihoods"]["y"])


@pytest.mark.parametrize("shape", [(1, 3, 100, 128), (1, 3, 128, 130), (1, 1, 128, 128), (3, 128, 128)])
def test_forward_refuses_unpadded_input(tiny, shape):
    with pytest.raises(ValueError, match=r"MambaIC.forward: x"):
        tiny(torch.rand(shape))


def test_every_scan_and_attention_goes_through_the_ops(tiny, monkeypatch):
    """MAMBAIC_BACKEND switches every SS2D core and window attention: count the op calls."""
    calls = {name: 0 for name in ("ss2d_core", "cross_scan", "selective_scan", "cross_merge", "window_attention")}
    for name in calls:
        op = getattr(mambaic_kernels, name)

        def counted(*args, _op=op, _name=name, **kwargs):
            calls[_name] += 1
            return _op(*args, **kwargs)

        monkeypatch.setattr(mambaic_kernels, name, counted)
    with torch.no_grad():
        tiny(torch.rand(1, 3, 128, 128))
    S = tiny.num_slices
    d0, d1, d2, d3 = TINY["depths"]
    vss_runs = 2 * (d0 + d1 + d2) + 3 * d3 + 2 * 2 * S  # g_a + g_s, h_a + 2 h_s, context (2 blocks, 2 passes)
    swatten_runs = (2 * S - 1) + 2 * 2 * S  # atten_mean/scale (scale skipped for slice 0), anchor x2 passes
    assert calls == {
        "ss2d_core": vss_runs,  # the SS2D core is one op; its backend runs the scans itself
        "cross_scan": 0,
        "selective_scan": 0,
        "cross_merge": 0,
        "window_attention": 2 * swatten_runs,
    }


def test_backend_choice_reaches_the_model(tiny, monkeypatch):
    monkeypatch.setenv("MAMBAIC_BACKEND", "no-such-backend")
    with pytest.raises(ValueError, match="MAMBAIC_BACKEND='no-such-backend' is not a backend"):
        tiny(torch.rand(1, 3, 128, 128))
    monkeypatch.setenv("MAMBAIC_BACKEND", "torch")
    with torch.no_grad():
        tiny(torch.rand(1, 3, 128, 128))


def test_checkerboard_helpers():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    anchor, non_anchor = cb.pack(x, cb.ANCHOR), cb.pack(x, cb.NON_ANCHOR)
    assert anchor.shape == (2, 3, 4, 3)
    assert anchor[0, 0, 0].tolist() == [0, 2, 4] and anchor[0, 0, 1].tolist() == [7, 9, 11]  # (row + col) even
    assert torch.equal(cb.unpack(anchor, cb.ANCHOR) + cb.unpack(non_anchor, cb.NON_ANCHOR), x)
    assert torch.equal(cb.merge(cb.keep(x, cb.ANCHOR), x), x)
    assert torch.equal(cb.keep(x, cb.ANCHOR) + cb.keep(x, cb.NON_ANCHOR), x)


def test_masked_conv_sees_only_anchors_and_leaves_its_weight_alone():
    conv = CheckerboardMaskedConv2d(2, 4, kernel_size=5)
    torch.nn.init.normal_(conv.weight)
    before = conv.weight.detach().clone()
    expected_mask = torch.tensor([[0, 1, 0, 1, 0], [1, 0, 1, 0, 1]] * 2 + [[0, 1, 0, 1, 0]], dtype=torch.float32)
    assert torch.equal(conv.mask[0, 0], expected_mask)
    y = torch.randn(1, 2, 8, 8)
    out = conv(cb.keep(y, cb.ANCHOR))
    # non-anchor outputs depend only on anchors; changing non-anchor inputs changes nothing there
    out2 = conv(cb.keep(y, cb.ANCHOR) + cb.keep(torch.randn(1, 2, 8, 8), cb.NON_ANCHOR))
    assert torch.allclose(cb.pack(out, cb.NON_ANCHOR), cb.pack(out2, cb.NON_ANCHOR), atol=1e-6)
    assert torch.equal(conv.weight, before)


def test_constructor_checks():
    with pytest.raises(ValueError, match="M must be a multiple of num_slices"):
        mambaic.MambaIC(N=8, M=21, num_slices=5)
    with pytest.raises(ValueError, match="depths must be 4"):
        mambaic.MambaIC(N=8, M=20, depths=(1, 1, 1))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_every_vss_block_matches_the_composed_core(tiny, backend):
    """With the same weights and inputs, each SS2D's core (the ss2d_core op, one direction at a
    time) equals the composition of cross_scan, selective_scan and cross_merge (the reference),
    within the fp32 tolerance: compared block by block, since end to end one latent that rounds
    the other way changes every later slice."""
    from mambaic.layers.ss2d import SS2D

    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, _n=name: inputs.setdefault(_n, args[0].detach().clone()))
             for name, m in tiny.named_modules() if isinstance(m, SS2D)]  # fmt: skip
    try:
        with torch.no_grad(), mambaic_kernels.use_backend(backend):
            tiny(torch.rand(1, 3, 128, 256))
    finally:
        for h in hooks:
            h.remove()
    modules = dict(tiny.named_modules())
    assert len(inputs) >= 10
    for name, x in inputs.items():
        ss2d = modules[name]
        with torch.no_grad(), mambaic_kernels.use_backend(backend):
            batch, H, W, _ = x.shape
            w_u = ss2d.in_proj.weight.chunk(2, dim=0)[0]
            u = torch.nn.functional.silu(ss2d.conv2d((x @ w_u.t()).permute(0, 3, 1, 2).contiguous()))
            fused = ss2d.core(u)
            composed = ss2d.out_norm(mambaic_kernels.reference.ss2d_core(
                u.contiguous(), ss2d.x_proj_weight, ss2d.dt_projs_weight, ss2d.dt_projs_bias, ss2d.A_logs, ss2d.Ds))
        torch.testing.assert_close(fused, composed, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_ss2d_applying_the_norm_itself_changes_nothing(grad):
    """SS2D(x, norm=norm) recomputes the norm for z after the core without autograd (memory); it must
    give SS2D(norm(x)) to the bit, with and without autograd."""
    from mambaic.layers.vss_block import VSSBlock

    block = VSSBlock(8)
    x = torch.randn(2, 5, 7, 8)  # (batch, H, W, C), H != W
    with torch.set_grad_enabled(grad), mambaic_kernels.use_backend("torch"):
        expected = block.op(block.norm(x))
        got = block.op(x, norm=block.norm)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("training", [False, True])
def test_z_likelihoods_are_the_bottlenecks(tiny, training):
    """MambaIC._z_likelihoods (capturable in a CUDA graph) gives EntropyBottleneck.forward's bits,
    its training noise included (the same draws from the same seed)."""
    z = torch.randn(2, TINY["z_channels"], 3, 5) * 4
    tiny.entropy_bottleneck.train(training)
    try:
        torch.manual_seed(1)
        want = tiny.entropy_bottleneck(z)[1]
        torch.manual_seed(1)
        got = tiny._z_likelihoods(z)
    finally:
        tiny.entropy_bottleneck.eval()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
