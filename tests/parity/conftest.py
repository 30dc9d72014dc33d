"""Fixtures of the parity suite: device, seed, backends (skipped with their reason), NaN scratch."""

import os

import pytest
import torch

from mambaic_kernels import _backend  # noqa: E402  (tests/conftest.py set TRITON_INTERPRET first)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Triton's interpreter runs every program instance in Python: keep its shapes tiny.
INTERPRETED = DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=_backend.BACKENDS)
def backend(request):
    """Every registered backend; one that can't load shows as skipped with its reason."""
    name = request.param
    if name == "cpu" and DEVICE != "cpu":
        # its supports() would say the same, but only after compiling the C++ extension
        pytest.skip("cpu backend: takes CPU tensors; this run's tensors are on cuda")
    reason = _backend._load(name)
    if reason is not None:
        pytest.skip(f"{name} backend unavailable: {reason}")
    return name


def require(op: str, backend: str, x: torch.Tensor, **extra) -> None:
    """Skip, with the backend's own reason, a case the backend declines (device, dtype, sizes)."""
    reason = _backend.why_unavailable(op, backend, device=x.device.type, dtype=x.dtype, **extra)
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")


@pytest.fixture(autouse=True)
def nan_scratch(monkeypatch):
    """Fill every torch.empty-family allocation with NaN, so an element a kernel forgets to write fails."""

    def poisoned(factory):
        def make(*args, **kwargs):
            t = factory(*args, **kwargs)
            if t.is_floating_point():
                t.fill_(float("nan"))
            return t

        return make

    monkeypatch.setattr(torch, "empty", poisoned(torch.empty))
    monkeypatch.setattr(torch, "empty_like", poisoned(torch.empty_like))
    monkeypatch.setattr(torch.Tensor, "new_empty", poisoned(torch.Tensor.new_empty))
