"""torch.compile over the model: every backend compiles with fullgraph=True (no graph break at our
ops), the compiled backends' ops stay single graph nodes, and compiled equals eager."""

import pytest
import torch

import mambaic_kernels as mk
from mambaic.layers.vss_block import VSSBlock
from mambaic_kernels import _backend

# What each backend's ss2d_core becomes in a traced graph: one custom op, or (torch) plain
# PyTorch that dynamo traces through.
CORE_NODE = {"torch": None, "cpu": "mambaic.ss2d_core_fwd_cpu", "triton": "mambaic.ss2d_core_fwd_triton"}


def _available(backend: str, x: torch.Tensor) -> None:
    reason = _backend._load(backend) or _backend.why_unavailable("ss2d_core", backend, device=x.device.type,
                                                                  dtype=x.dtype, d_state=16, dt_rank=1)  # fmt: skip
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")


class Recorder:
    """A torch.compile backend that keeps the FX graph's call targets and runs it as traced."""

    def __init__(self):
        self.targets: list[str] = []

    def __call__(self, gm, example_inputs):
        # an op shows as its packet or its overload depending on how it was called
        self.targets += [str(n.target).removesuffix(".default") for n in gm.graph.nodes if n.op == "call_function"]
        return gm.forward


@pytest.mark.parametrize("backend", list(CORE_NODE))
def test_vss_block_compiles_in_one_graph(backend):
    block = VSSBlock(8).eval()
    x = torch.randn(2, 8, 6, 10)  # batch 2, H != W
    _available(backend, x)
    recorder = Recorder()
    with torch.no_grad(), mk.use_backend(backend):
        eager = block(x)
        compiled = torch.compile(block, fullgraph=True, backend=recorder)(x)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    ours = [t for t in recorder.targets if t.startswith("mambaic.")]
    assert ours == ([CORE_NODE[backend]] if CORE_NODE[backend] else [])


def test_compiled_code_follows_use_backend():
    """One compiled block, two backends in turn: the second use_backend traces it again (the
    choice is a guarded global for dynamo), so the cpu op appears after the torch trace."""
    block = VSSBlock(8).eval()
    x = torch.randn(1, 8, 5, 7)
    _available("cpu", x)
    recorder = Recorder()
    compiled = torch.compile(block, fullgraph=True, backend=recorder)
    with torch.no_grad():
        with mk.use_backend("cpu"):
            eager = block(x)  # loads the backend: importing is not traceable
        with mk.use_backend("torch"):
            compiled(x)
        assert not [t for t in recorder.targets if t.startswith("mambaic.")]
        with mk.use_backend("cpu"):
            out = compiled(x)
    assert [t for t in recorder.targets if t.startswith("mambaic.")] == [CORE_NODE["cpu"]]
    torch.testing.assert_close(out, eager, rtol=0, atol=0)


def test_compiled_training_step_matches_eager():
    """AOT autograd over the cpu backend's custom ops: the compiled backward gives eager's gradients."""
    x = torch.randn(1, 8, 5, 7)
    _available("cpu", x)
    block = VSSBlock(8)
    with mk.use_backend("cpu"):
        block(x).square().sum().backward()
        eager = {n: p.grad.clone() for n, p in block.named_parameters()}
        block.zero_grad()
        torch.compile(block, fullgraph=True, backend="aot_eager")(x).square().sum().backward()
    for name, p in block.named_parameters():
        torch.testing.assert_close(p.grad, eager[name], rtol=1e-5, atol=1e-6, msg=name)


def test_whole_model_compiles(tiny):
    """The whole model under torch.compile (CompressAI's entropy bottleneck breaks the graph there,
    not at our ops) gives the eager reconstruction."""
    x = torch.rand(1, 3, 128, 128)
    _available("cpu", x)
    with torch.no_grad(), mk.use_backend("cpu"):
        eager = tiny(x)["x_hat"]
        compiled = torch.compile(tiny, backend="eager")(x)["x_hat"]
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
