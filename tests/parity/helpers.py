"""Comparison helpers: backend output and gradients against the float64 reference."""

import torch

from .tolerances import LOW_PRECISION_FACTOR, SCALED_FORWARD, tolerance


def assert_close(actual, expected, op, dtype, direction, what):
    """assert_close with the table's tolerance; the message names the case and the worst element."""
    rtol, atol = tolerance(op, dtype, direction)
    actual = actual.detach().to(torch.float64)
    expected = expected.detach().to(torch.float64)
    if direction == "bwd" or op in SCALED_FORWARD:
        # Gradients are compared relative to the input's largest reference gradient: reductions
        # over batch * L (or windows) terms make elementwise-relative checks meaningless near zero
        # (and so do the outputs of SCALED_FORWARD ops, see tolerances.py).
        scale = expected.abs().max().clamp_min(1.0)
        actual, expected = actual / scale, expected / scale
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual - expected).abs()
    bad = diff > atol + rtol * expected.abs()
    if bad.any() or not torch.isfinite(actual).all():
        worst = int(torch.nan_to_num(diff, nan=float("inf")).argmax())
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), actual.shape))
        raise AssertionError(
            f"{what} ({dtype}, {direction}): {int(bad.sum())} of {bad.numel()} elements off; "
            f"max abs err {diff.max().item():.3g} at {idx} (got {actual[idx].item():.6g}, "
            f"expected {expected[idx].item():.6g}); rtol={rtol}, atol={atol}"
        )


def check_low_precision(actual, reference_lowp, expected, op, dtype, direction, what):
    """flash-attention's rule: error vs float64 at most 2x the reference's own error in `dtype`."""
    if dtype not in (torch.float16, torch.bfloat16):
        return
    _, atol = tolerance(op, dtype, direction)
    expected = expected.detach().double()
    err = (actual.detach().double() - expected).abs().max().item()
    ref_err = (reference_lowp.detach().double() - expected).abs().max().item()
    assert err <= LOW_PRECISION_FACTOR * ref_err + atol, (
        f"{what} ({dtype}, {direction}): max error {err:.3g} exceeds {LOW_PRECISION_FACTOR} x the "
        f"reference's own {dtype} error {ref_err:.3g} + atol {atol}"
    )


def grads(out, inputs, dout):
    """Gradients of <out, dout> w.r.t. each input that requires grad (None for the others)."""
    wanted = [x for x in inputs if x is not None and x.requires_grad]
    got = iter(torch.autograd.grad(out, wanted, dout, allow_unused=False))
    return [next(got) if (x is not None and x.requires_grad) else None for x in inputs]


def leaf(t, dtype=None, requires_grad=True):
    """A fresh leaf copy (optionally cast) that records gradients."""
    t = t.detach().to(dtype or t.dtype).clone()
    return t.requires_grad_(requires_grad)
