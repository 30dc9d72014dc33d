"""CUDAGraphForward: the replayed forward equals the eager one bit for bit, follows new inputs,
returns copies, captures once per shape; bad uses are refused with a clear error."""

import pytest
import torch

import mambaic

from .conftest import TINY

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: CUDA graphs")


@pytest.fixture(autouse=True)
def deterministic_cudnn():
    """Bit-equality needs cuDNN's deterministic algorithms: by default two eager forwards' x_hat
    differ in the last bit (H200, 2026-11-29), graphs or not; the codec runs this way too."""
    saved = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True
    yield
    torch.backends.cudnn.deterministic = saved


def _same(a: dict, b: dict) -> None:
    torch.testing.assert_close(a["x_hat"], b["x_hat"], rtol=0, atol=0)
    for k in ("y", "z"):
        torch.testing.assert_close(a["likelihoods"][k], b["likelihoods"][k], rtol=0, atol=0)


@needs_gpu
@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_replay_equals_eager(backend):
    import mambaic_kernels as mk

    model = mambaic.random_model(0, **TINY).cuda()
    graphed = mambaic.CUDAGraphForward(model)
    g = torch.Generator(device="cuda").manual_seed(0)
    xs = [torch.rand(2, 3, 128, 256, device="cuda", generator=g) for _ in range(2)]  # batch 2, H != W
    with mk.use_backend(backend), torch.no_grad():
        eager = [model(x) for x in xs]
        first = graphed(xs[0])
        second = graphed(xs[1])  # the same graph, replayed on a new input
        _same(first, eager[0])  # a copy: not overwritten by the second replay
        _same(second, eager[1])
        assert len(graphed._captured) == 1
        third = graphed(xs[0][..., :128])  # another shape: a second capture
        _same(third, model(xs[0][..., :128]))
        assert len(graphed._captured) == 2


def test_refuses_cpu_inputs_and_training_mode():
    model = mambaic.random_model(0, **TINY)
    graphed = mambaic.CUDAGraphForward(model)
    with pytest.raises(ValueError, match="x must be a CUDA tensor, got a cpu tensor"):
        graphed(torch.rand(1, 3, 128, 128))
    if torch.cuda.is_available():
        model.cuda().train()
        with pytest.raises(ValueError, match=r"must be in eval mode \(model.eval\(\)\)"):
            graphed(torch.rand(1, 3, 128, 128, device="cuda"))


def _photo_like(batch, height, width, device, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.rand(batch, 3, height, width, device=device, generator=g)


@needs_gpu
@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_coding_replay_equals_eager(backend):
    """compress / decompress with graphed network parts give eager's strings, y_hat and x_hat, and
    each side decodes the other's strings: encoder and decoder may mix eager and replay."""
    import mambaic_kernels as mk

    eager = mambaic.random_model(0, **TINY).cuda().eval()
    eager.update()
    graphed = mambaic.random_model(0, **TINY).cuda().eval().use_cuda_graphs()
    graphed.update()
    xs = [_photo_like(1, 128, 256, "cuda", seed) for seed in (1, 2)]
    with mk.use_backend(backend), torch.no_grad():
        for x in xs:  # the first image captures, the second replays
            want, got = eager.compress(x), graphed.compress(x)
            assert got["strings"] == want["strings"]
            torch.testing.assert_close(got["y_hat"], want["y_hat"], rtol=0, atol=0)
            for decoder, strings in ((graphed, want["strings"]), (eager, got["strings"])):
                out = decoder.decompress(strings, want["shape"])
                ref = eager.decompress(want["strings"], want["shape"])
                torch.testing.assert_close(out["x_hat"], ref["x_hat"], rtol=0, atol=0)
                torch.testing.assert_close(out["y_hat"], want["y_hat"], rtol=0, atol=0)
        captured = len(graphed._graphs)
        # analysis, hyper-synthesis, synthesis, and 3 parts per slice
        assert captured == 3 + 3 * graphed.num_slices
        other = _photo_like(1, 256, 128, "cuda", 3)  # another size: new captures, still equal
        assert graphed.compress(other)["strings"] == eager.compress(other)["strings"]
        assert len(graphed._graphs) == 2 * captured - 1  # synthesis is not captured by compress


def test_graphs_do_nothing_on_the_cpu(tiny):
    """On a CPU model use_cuda_graphs changes nothing: the parts run eagerly."""
    x = _photo_like(1, 128, 128, "cpu", 0)
    tiny.eval().update()
    with torch.no_grad():
        want = tiny.compress(x)
        tiny.use_cuda_graphs()
        try:
            got = tiny.compress(x)
        finally:
            tiny.use_cuda_graphs(False)
    assert got["strings"] == want["strings"]
    assert tiny._graphs is None
