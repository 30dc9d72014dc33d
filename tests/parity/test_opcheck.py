"""torch.library.opcheck on every custom op a backend registers (schema, fake kernel, autograd)."""

import pytest
import torch

from mambaic_kernels import _backend

from .conftest import DEVICE, INTERPRETED

# Under Triton's interpreter the launch can't be captured by AOT dispatch (it runs eagerly on the
# fake tensors' absent storage), so that check runs on the GPU only.
UTILS = ("test_schema", "test_autograd_registration", "test_faketensor") + (() if INTERPRETED else ("test_aot_dispatch_dynamic",))


def _samples(dtype=torch.float32):
    f = dict(device=DEVICE, dtype=dtype)
    g = lambda *s: torch.randn(*s, **f).requires_grad_()  # noqa: E731
    return {
        "cross_scan_fwd_triton": (g(2, 3, 5, 7), False),
        "cross_merge_fwd_triton": (g(2, 4, 3, 5, 7), True),
        "window_attention_fwd_triton": (g(2, 8, 16, 96), g(2, 15, 15), 2, 8, True),
        "selective_scan_fwd_triton": (g(2, 8, 37), torch.rand(2, 8, 37, **f).requires_grad_(),
                                      (-torch.rand(8, 16, device=DEVICE) - 0.1).requires_grad_(),
                                      g(2, 4, 16, 37), g(2, 4, 16, 37),
                                      torch.randn(8, device=DEVICE).requires_grad_(),
                                      torch.randn(8, device=DEVICE).requires_grad_(), True, True, 1),
        # u (2, 6, 5, 7) and SS2D weights with R = 2, N = 4, cut into 2 chunks per direction
        "ss2d_core_fwd_triton": (g(2, 6, 5, 7), g(4, 10, 6) / 3, g(4, 6, 2) / 2,
                                 (torch.randn(4, 6, **f) - 2).requires_grad_(), (torch.rand(24, 4, **f)).requires_grad_(),
                                 g(24), 2, True),  # fmt: skip
    }


TRITON_OPS = ["cross_scan_fwd_triton", "cross_merge_fwd_triton", "window_attention_fwd_triton", "selective_scan_fwd_triton",
              "ss2d_core_fwd_triton"]


@pytest.mark.parametrize("name", TRITON_OPS)
def test_opcheck_triton(name):
    reason = _backend._load("triton")
    if reason is not None:
        pytest.skip(f"triton backend unavailable: {reason}")
    op = getattr(torch.ops.mambaic, name)
    torch.library.opcheck(op, _samples()[name], test_utils=UTILS)


def _compiled_samples():
    """Inputs of the ops of the compiled backends (cpu: C++, cuda: CUDA C++), on DEVICE."""
    f = dict(device=DEVICE, dtype=torch.float32)
    g = lambda *s: torch.randn(*s, **f).requires_grad_()  # noqa: E731
    scan = (g(2, 8, 37), torch.rand(2, 8, 37, **f).requires_grad_(), (-torch.rand(8, 16, **f) - 0.1).requires_grad_(),
            g(2, 4, 16, 37), g(2, 4, 16, 37), g(8), g(8), True)  # fmt: skip
    core = (g(2, 6, 5, 7), g(4, 10, 6) / 3, g(4, 6, 2) / 2, (torch.randn(4, 6, **f) - 2).requires_grad_(),
            torch.rand(24, 4, **f).requires_grad_(), g(24))  # fmt: skip

    def scan_bwd():  # the backward op's inputs: the forward's saved tile states and a fresh dy
        states = torch.ops.mambaic.selective_scan_fwd_cuda(*scan, True)[1].detach()
        return (*(t.detach() if isinstance(t, torch.Tensor) else t for t in scan), torch.randn(2, 8, 37, **f), states)

    def ss2d_bwd():  # the backward op's inputs: a fresh dout, the forward's inputs and tile states
        states = torch.ops.mambaic.ss2d_core_fwd_cuda(*core, True)[1].detach()
        return (torch.randn(2, 5, 7, 6, **f), *(t.detach() for t in core), states)

    return {  # built on demand: the cuda samples run a cuda op
        "cross_scan_cpu": lambda: (g(2, 3, 5, 7), False),
        "cross_merge_cpu": lambda: (g(2, 4, 3, 5, 7), True),
        "selective_scan_fwd_cpu": lambda: scan,
        "ss2d_core_fwd_cpu": lambda: core,
        "cross_scan_cuda": lambda: (g(2, 3, 5, 7), False),
        "window_attention_fwd_cuda": lambda: (g(2, 16, 24, 3 * 2 * 16), g(2, 15, 15), 2, 8, True),
        "window_attention_bwd_cuda": lambda: (torch.randn(2, 16, 24, 32, **f), torch.randn(2, 16, 24, 96, **f),
                                              torch.randn(2, 15, 15, **f), 2, 8, True),
        "cross_merge_cuda": lambda: (g(2, 4, 3, 5, 7), True),
        "selective_scan_fwd_cuda": lambda: (*scan, True),
        "selective_scan_bwd_cuda": scan_bwd,
        "ss2d_core_fwd_cuda": lambda: (*core, True),
        "ss2d_core_bwd_cuda": ss2d_bwd,
    }


COMPILED_OPS = [pytest.param(name.rsplit("_", 1)[1], name, id=name)
                for name in ("cross_scan_cpu", "cross_merge_cpu", "selective_scan_fwd_cpu", "ss2d_core_fwd_cpu",
                             "cross_scan_cuda", "cross_merge_cuda", "window_attention_fwd_cuda",
                             "window_attention_bwd_cuda", "selective_scan_fwd_cuda",
                             "selective_scan_bwd_cuda", "ss2d_core_fwd_cuda",
                             "ss2d_core_bwd_cuda")]


@pytest.mark.parametrize("backend, name", COMPILED_OPS)
def test_opcheck_compiled(backend, name):
    if backend != DEVICE:
        pytest.skip(f"{name} takes {backend} tensors; this run's tensors are on {DEVICE}")
    reason = _backend._load(backend)
    if reason is not None:
        pytest.skip(f"{backend} backend unavailable: {reason}")
    op = getattr(torch.ops.mambaic, name)
    torch.library.opcheck(op, _compiled_samples()[name](),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))  # fmt: skip
