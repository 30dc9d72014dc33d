"""mambaic.training on a tiny model: the official step learns, skips together, and the model
names exactly the parameters that never get a gradient (what DistributedDataParallel is told)."""

import pytest
import torch

import mambaic
from mambaic import training as T


@pytest.fixture
def tiny():
    return mambaic.random_model(0, N=8, M=20, depths=(1, 1, 1, 1), z_channels=8).train()


def _batch(seed=1, shape=(2, 3, 128, 128)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tiny):
    torch.manual_seed(0)
    optimizer, aux_optimizer = T.optimizers(tiny, lr=1e-3)
    criterion, autocast, x = T.RateDistortionLoss(0.01), T.autocast_for("fp32", "cpu"), _batch()
    losses = [T.train_step(tiny, x, criterion, optimizer, aux_optimizer, 1.0, autocast).loss for _ in range(8)]
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(torch.isfinite(p).all() for p in tiny.parameters())


def test_unused_parameters_are_exactly_those_without_a_gradient(tiny):
    out = tiny(_batch())
    T.RateDistortionLoss(0.01)(out, _batch())["loss"].backward()
    without = {n for n, p in tiny.named_parameters() if p.grad is None}
    assert without == set(tiny.unused_parameters()) and without  # slice 0's mu / scale transforms
    assert tiny.entropy_bottleneck.quantiles.grad is not None  # the medians shift z_hat: reduced by DDP too


def test_a_step_is_skipped_on_every_rank_when_one_must(tiny):
    optimizer, aux_optimizer = T.optimizers(tiny)
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    step = lambda x, together: T.train_step(tiny, x, T.RateDistortionLoss(0.01), optimizer, aux_optimizer, 1.0,  # noqa: E731
                                            T.autocast_for("fp32", "cpu"), together)  # fmt: skip
    nan = _batch()
    nan[0, 0, 5, 7] = torch.nan
    assert step(nan, None) is None  # a non-finite loss here
    assert step(_batch(), lambda bad: True) is None  # another rank's loss was not finite
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())
    assert step(_batch(), lambda bad: bad) is not None


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: CUDA graphs")


@needs_gpu
@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_graphed_forward_backward_equals_eager(backend):
    """In eval mode (rounding, no stochastic depth: one possible outcome) the replayed loss equals
    eager's bit for bit, on the captured batch and on a new one, and the gradients agree with
    eager's as closely as two eager backward passes agree with each other (the scan backward's dB
    and dC are sums of float atomics, in no fixed order); the gradients are the graph's own
    tensors, rewritten each replay."""
    import mambaic_kernels as mk

    torch.backends.cudnn.deterministic = True
    try:
        model = mambaic.random_model(0, N=8, M=20, depths=(1, 1, 1, 1), z_channels=8).cuda().eval()
        criterion = T.RateDistortionLoss(0.01)
        graphed = T.GraphedForwardBackward(model, criterion, T.autocast_for("fp32", "cuda", True))
        names, params = zip(*((n, p) for n, p in model.named_parameters() if p.requires_grad))

        def eager_pass(x):
            for p in params:
                p.grad = None
            terms = criterion(model(x), x)
            terms["loss"].backward()  # the autograd graph goes with `terms` (a capture needs it gone)
            return terms["loss"].detach(), [None if p.grad is None else p.grad.clone() for p in params]

        with mk.use_backend(backend):
            for seed in (1, 2):
                x = _batch(seed, (2, 3, 128, 256)).cuda()
                want_loss, want = eager_pass(x)
                _, again = eager_pass(x)
                got = graphed(x)
                torch.testing.assert_close(got["loss"], want_loss, rtol=0, atol=0)
                # The atomics' noise reaches every gradient upstream of the scans, and a gradient that
                # nearly cancels carries it at a large relative size: a floor of 1e-7 of the largest
                # gradient's norm (the H100 run of 2026-12-07 saw 2.7e-13, against 2.5e-14 eager to
                # eager, on a gradient of norm 9.2e-10), far below what a stale or misplaced gradient
                # is off by (its own size, or another parameter's)
                floor = 1e-7 * max(g.norm().item() for g in want if g is not None)
                for name, p, g, g2 in zip(names, params, want, again):
                    if g is None:
                        assert p.grad is None, name
                        continue
                    noise = (g - g2).norm().item()  # eager against eager
                    off = (p.grad - g).norm().item()
                    # 1e-4 of the norm: the H200 run of 2026-11-30 saw 2.2e-5 (against 4.5e-6 eager to
                    # eager) on a gradient of norm 8e-5
                    assert off <= max(1e-4 * g.norm().item(), 10 * noise, floor), (
                        f"{name}: |graphed - eager| = {off:.3g}, |eager - eager| = {noise:.3g}, |eager| = {g.norm():.3g}")
                grads = [p.grad for p in params]
            graphed(_batch(3, (2, 3, 128, 256)).cuda())
            assert all(a is b for a, b in zip(grads, (p.grad for p in params)))  # rewritten in place
    finally:
        torch.backends.cudnn.deterministic = False


@needs_gpu
def test_graphed_training_steps_learn():
    torch.manual_seed(0)
    model = mambaic.random_model(0, N=8, M=20, depths=(1, 1, 1, 1), z_channels=8).cuda().train()
    optimizer, aux_optimizer = T.optimizers(model, lr=1e-3)
    criterion, x = T.RateDistortionLoss(0.01), _batch().cuda()
    graphed = T.GraphedForwardBackward(model, criterion, T.autocast_for("fp32", "cuda", True))
    losses = [T.train_step(model, x, criterion, optimizer, aux_optimizer, 1.0, None, graphed=graphed).loss
              for _ in range(8)]  # fmt: skip
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(ValueError, match=r"captured for batches of shape \(2, 3, 128, 128\)"):
        graphed(_batch(shape=(1, 3, 128, 128)).cuda())
