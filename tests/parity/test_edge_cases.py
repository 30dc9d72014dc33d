"""Edge cases of ss2d_core and selective_scan, every backend against the torch backend (issue 15,
point 3): one step, one row or column, empty batches and maps, no channels, non-contiguous and
channels-last inputs, NaN and Inf. Documented behaviour: empty inputs give empty outputs; no
channels and non-contiguous inputs are refused with the op's ValueError; a NaN or Inf anywhere in u
makes its whole image non-finite (NaN, or Inf where the skip term D * u meets it first), at the
same places in every backend (x_proj mixes the channels of its position into B, C
and delta, each scan carries the NaN on, and the four directions between them reach every position)."""

import pytest
import torch

import mambaic_kernels as mk

from .conftest import DEVICE, require
from .test_ss2d_core import make_inputs


def _ss2d(backend, u, w):
    require("ss2d_core", backend, u, d_state=w["A_logs"].shape[1])
    with mk.use_backend(backend):
        return mk.ss2d_core(u, **w)


def _float(u64, w64):
    return u64.float(), {n: t.float() for n, t in w64.items()}


@pytest.mark.parametrize("case", [(2, 3, 1, 1, 4, 2), (1, 5, 1, 7, 4, 1), (2, 3, 6, 1, 16, 2), (3, 7, 2, 3, 3, 3)],
                         ids=["L1", "one-row", "one-column", "D7-N3"])  # fmt: skip
def test_small_maps_agree_with_torch(backend, case):
    u, w = _float(*make_inputs(*case))
    torch.testing.assert_close(_ss2d(backend, u, w), _ss2d("torch", u, w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(0, 3, 4, 5), (2, 3, 0, 5), (2, 3, 4, 0)], ids=["batch0", "H0", "W0"])
def test_empty_inputs_give_empty_outputs(backend, shape):
    _, w = _float(*make_inputs(1, 3, 2, 2, 4, 2))
    u = torch.randn(shape, device=DEVICE)
    out = _ss2d(backend, u, w)
    assert out.shape == (shape[0], shape[2], shape[3], shape[1]) and out.numel() == 0


def test_refused_inputs_name_the_problem(backend):
    u, w = _float(*make_inputs(2, 4, 5, 6, 4, 2))
    require("ss2d_core", backend, u, d_state=4)
    with mk.use_backend(backend):
        with pytest.raises(ValueError, match="u must be contiguous"):
            mk.ss2d_core(u.transpose(2, 3).contiguous().transpose(2, 3), **w)  # an H x W view
        with pytest.raises(ValueError, match="u must be contiguous"):
            mk.ss2d_core(u.contiguous(memory_format=torch.channels_last), **w)
        no_channels = {n: t[..., :0] if n == "x_proj_weight" else t for n, t in w.items()}
        with pytest.raises(ValueError, match="at least one channel"):
            mk.ss2d_core(u[:, :0].contiguous(), **no_channels)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_nan_and_inf_make_the_whole_image_non_finite(backend, value):
    u, w = _float(*make_inputs(2, 4, 5, 6, 4, 2))
    u[1, 2, 3, 4] = value
    got, want = _ss2d(backend, u, w), _ss2d("torch", u, w)
    assert not got[1].isfinite().any(), f"{backend}: {value} at one position must reach the whole image"
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf()), backend
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)  # the other image is intact


def test_selective_scan_one_step_and_no_channels(backend):
    u = torch.randn(2, 6, 1, device=DEVICE)
    delta, A = torch.rand(2, 6, 1, device=DEVICE), -torch.rand(6, 4, device=DEVICE)
    B, C = torch.randn(2, 2, 4, 1, device=DEVICE), torch.randn(2, 2, 4, 1, device=DEVICE)
    require("selective_scan", backend, u, d_state=4)
    with mk.use_backend(backend):
        got = mk.selective_scan(u, delta, A, B, C, delta_softplus=True)
        with pytest.raises(ValueError, match="at least one channel"):
            mk.selective_scan(u[:, :0], delta[:, :0], A[:0], B, C)
    with mk.use_backend("torch"):
        torch.testing.assert_close(got, mk.selective_scan(u, delta, A, B, C, delta_softplus=True), rtol=1e-5, atol=1e-6)
