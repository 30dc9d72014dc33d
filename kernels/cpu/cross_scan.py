"""`cpu` backend cross_scan / cross_merge: one C++ pass per plane, each the other's backward.

Registered as ``mambaic::cross_scan_cpu`` / ``mambaic::cross_merge_cpu`` (torch.library custom ops
with fake kernels and autograd), so that torch.compile keeps each as one node of its graph.
"""

import torch

from ..cross_scan import scan_output_shape


def make_cross_ops(ext):
    @torch.library.custom_op("mambaic::cross_scan_cpu", mutates_args=())
    def cross_scan_cpu(x: torch.Tensor, channel_last: bool) -> torch.Tensor:
        """(batch, 4, C, L) from x (batch, C, H, W), or (batch, H, W, C) when channel_last."""
        return ext.cross_scan(x.contiguous(), channel_last)

    @cross_scan_cpu.register_fake
    def _(x, channel_last):
        return x.new_empty(scan_output_shape(x, channel_last))

    @torch.library.custom_op("mambaic::cross_merge_cpu", mutates_args=())
    def cross_merge_cpu(y: torch.Tensor, channel_last: bool) -> torch.Tensor:
        """(batch, C, L) from y (batch, 4, C, H, W); channel_last: (batch, L, C), a transposed view of
        a (batch, C, L) tensor (the torch backend's layout)."""
        out = ext.cross_merge(y.contiguous())
        return out.transpose(1, 2) if channel_last else out

    @cross_merge_cpu.register_fake
    def _(y, channel_last):
        batch, _, C, H, W = y.shape
        out = y.new_empty((batch, C, H * W))
        return out.transpose(1, 2) if channel_last else out

    def scan_backward(ctx, g):
        batch, _, C, _ = g.shape
        H, W = ctx.hw
        dx = cross_merge_cpu(g.reshape(batch, 4, C, H, W), ctx.channel_last)  # the adjoint
        return dx.reshape(ctx.shape), None

    def scan_setup(ctx, inputs, output):
        x, channel_last = inputs
        ctx.shape, ctx.channel_last = x.shape, channel_last
        ctx.hw = (x.shape[1], x.shape[2]) if channel_last else (x.shape[2], x.shape[3])

    def merge_backward(ctx, g):
        batch, _, C, H, W = ctx.shape
        x = g.reshape(batch, H, W, C) if ctx.channel_last else g.reshape(batch, C, H, W)
        return cross_scan_cpu(x, ctx.channel_last).view(ctx.shape), None

    def merge_setup(ctx, inputs, output):
        y, channel_last = inputs
        ctx.shape, ctx.channel_last = y.shape, channel_last

    torch.library.register_autograd("mambaic::cross_scan_cpu", scan_backward, setup_context=scan_setup)
    torch.library.register_autograd("mambaic::cross_merge_cpu", merge_backward, setup_context=merge_setup)
    return cross_scan_cpu, cross_merge_cpu
