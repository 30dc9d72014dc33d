"""Precision modes: set_precision casts the transforms and nothing else, the forward stays close to
fp32, TF32 is switched on around the transforms only, and a bad name is refused."""

import pytest
import torch

import mambaic
from mambaic.precision import PRECISIONS, PrecisionError

from .conftest import TINY


def _dtypes(module):
    return {p.dtype for p in module.parameters()}


def _photo_like(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 128, 256, generator=g)  # batch 2, H != W


@pytest.fixture(scope="module")
def reference():
    model = mambaic.random_model(0, **TINY)
    x = _photo_like()
    with torch.no_grad():
        return x, model(x)


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precision_casts_the_transforms_only_and_stays_close(reference, precision, dtype):
    x, want = reference
    model = mambaic.random_model(0, **TINY).set_precision(precision)
    assert model.precision == precision
    assert _dtypes(model.g_a) == _dtypes(model.g_s) == {dtype}
    others = [m for name, m in model.named_children() if name not in ("g_a", "g_s")]
    assert all(_dtypes(m) <= {torch.float32} for m in others)  # the entropy model stays float32
    with torch.no_grad():
        got = model(x)
    assert got["x_hat"].dtype == got["y"].dtype == got["likelihoods"]["y"].dtype == torch.float32
    # half-precision transforms: y within a few bf16 / fp16 steps of its fp32 value
    scale = want["y"].abs().max()
    error = (got["y"] - want["y"]).abs().max() / scale
    assert 0 < error < (0.03 if precision == "bf16" else 0.005), f"relative error of y: {error:.2e}"


def test_tf32_is_on_inside_the_transforms_only(reference):
    x, want = reference
    model = mambaic.random_model(0, **TINY).set_precision("tf32")
    assert model.precision == "tf32" and _dtypes(model) == {torch.float32}
    seen = []

    def look(*_):
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))

    hooks = [model.g_a.register_forward_pre_hook(look), model.h_a.register_forward_pre_hook(look)]
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            got = model(x)
        assert seen == [(True, True), (False, False)]  # on in g_a, PyTorch's settings in h_a
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    # TF32 does not exist on the CPU: the same bits as fp32 there
    if x.device.type == "cpu":
        torch.testing.assert_close(got["x_hat"], want["x_hat"], rtol=0, atol=0)


def test_back_to_fp32_and_bad_names():
    model = mambaic.random_model(0, **TINY)
    assert model.precision == "fp32"
    model.set_precision("bf16").set_precision("fp32")
    assert model.precision == "fp32" and _dtypes(model) == {torch.float32}
    with pytest.raises(PrecisionError, match=r"precision must be one of fp32, tf32, bf16, fp16, got 'float16'"):
        model.set_precision("float16")
    assert tuple(PRECISIONS) == ("fp32", "tf32", "bf16", "fp16")
