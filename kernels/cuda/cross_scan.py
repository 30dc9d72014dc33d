"""`cuda` backend of cross_scan / cross_merge: the kernels of csrc/cross_scan.cu, in the input's
dtype (float32, float16, bfloat16; cross_merge adds in float32).

``mambaic::cross_scan_cuda`` and ``mambaic::cross_merge_cuda`` are each other's adjoint, so each
op's backward is the other op (and a second derivative works too). Eager calls that need no
gradient skip the custom-op dispatcher (`direct_launch_ok`: its CPU time exceeds the kernel's on
the model's small maps).
"""

from __future__ import annotations

import torch

from .. import _backend
from ..cross_scan import scan_output_shape
from .._backend import direct_launch_ok
from . import _ext, supports_device


@torch.library.custom_op("mambaic::cross_scan_cuda", mutates_args=())
def cross_scan_cuda(x: torch.Tensor, channel_last: bool) -> torch.Tensor:
    """(batch, 4, C, H*W) from x (batch, C, H, W), or (batch, H, W, C) with channel_last."""
    return _ext.cross_scan(x, channel_last)


@cross_scan_cuda.register_fake
def _(x, channel_last):
    return x.new_empty(scan_output_shape(x, channel_last))


@torch.library.custom_op("mambaic::cross_merge_cuda", mutates_args=())
def cross_merge_cuda(y: torch.Tensor, channel_last: bool) -> torch.Tensor:
    """The map (batch, C, H, W), or (batch, H, W, C) with channel_last, from y (batch, 4, C, H, W)."""
    return _ext.cross_merge(y, channel_last)


@cross_merge_cuda.register_fake
def _(y, channel_last):
    batch, _, C, H, W = y.shape
    return y.new_empty((batch, H, W, C) if channel_last else (batch, C, H, W))


def _scan_setup(ctx, inputs, output):
    x, ctx.channel_last = inputs
    ctx.hw = tuple(x.shape[1:3]) if ctx.channel_last else tuple(x.shape[2:4])


def _scan_backward(ctx, grad):
    batch, _, C, _ = grad.shape
    return cross_merge_cuda(grad.contiguous().view(batch, 4, C, *ctx.hw), ctx.channel_last), None


def _merge_setup(ctx, inputs, output):
    y, ctx.channel_last = inputs
    ctx.shape = y.shape


def _merge_backward(ctx, grad):
    return cross_scan_cuda(grad.contiguous(), ctx.channel_last).view(ctx.shape), None


torch.library.register_autograd("mambaic::cross_scan_cuda", _scan_backward, setup_context=_scan_setup)
torch.library.register_autograd("mambaic::cross_merge_cuda", _merge_backward, setup_context=_merge_setup)


def cross_scan(x: torch.Tensor, channel_last: bool) -> torch.Tensor:
    """The backend entry point registered with _backend (arguments already checked)."""
    if direct_launch_ok(x):
        return _ext.cross_scan(x, channel_last)
    return torch.ops.mambaic.cross_scan_cuda(x, channel_last)


def cross_merge(y: torch.Tensor, channel_last: bool) -> torch.Tensor:
    """The backend entry point: (batch, C, L), or (batch, L, C) with channel_last."""
    batch, _, C, H, W = y.shape
    out = _ext.cross_merge(y, channel_last) if direct_launch_ok(y) else torch.ops.mambaic.cross_merge_cuda(y, channel_last)
    return out.view(batch, H * W, C) if channel_last else out.view(batch, C, H * W)


def supports(device: str, dtype: torch.dtype, **_) -> str | None:
    return supports_device(device, dtype)


_backend.register("cross_scan", "cuda", cross_scan, supports)
_backend.register("cross_merge", "cuda", cross_merge, supports)
