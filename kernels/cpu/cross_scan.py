"""`cpu` backend cross_scan / cross_merge: one C++ pass per plane, each the other's backward."""

import torch


def make_cross_ops(ext):
    def merge(y: torch.Tensor, channel_last: bool) -> torch.Tensor:
        out = ext.cross_merge(y)  # (batch, C, L)
        return out.transpose(1, 2) if channel_last else out  # the torch backend's layout, a view

    class _CrossScan(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, channel_last):
            ctx.shape, ctx.channel_last = x.shape, channel_last
            return ext.cross_scan(x, channel_last)

        @staticmethod
        def backward(ctx, g):
            batch = ctx.shape[0]
            H, W = (ctx.shape[1], ctx.shape[2]) if ctx.channel_last else (ctx.shape[2], ctx.shape[3])
            dx = ext.cross_merge(g.contiguous().view(batch, 4, -1, H, W))  # (batch, C, L): the adjoint
            if ctx.channel_last:
                return dx.transpose(1, 2).reshape(ctx.shape), None
            return dx.view(ctx.shape), None

    class _CrossMerge(torch.autograd.Function):
        @staticmethod
        def forward(ctx, y, channel_last):
            ctx.shape, ctx.channel_last = y.shape, channel_last
            return merge(y, channel_last)

        @staticmethod
        def backward(ctx, g):
            batch, _, C, H, W = ctx.shape
            if ctx.channel_last:  # g: (batch, L, C), i.e. a channel-last map
                dy = ext.cross_scan(g.contiguous().view(batch, H, W, C), True)
            else:
                dy = ext.cross_scan(g.contiguous().view(batch, C, H, W), False)
            return dy.view(ctx.shape), None

    def needs_grad(t):
        return torch.is_grad_enabled() and t.requires_grad

    def cross_scan(x, channel_last):
        return _CrossScan.apply(x, channel_last) if needs_grad(x) else ext.cross_scan(x, channel_last)

    def cross_merge(y, channel_last):
        return _CrossMerge.apply(y, channel_last) if needs_grad(y) else merge(y, channel_last)

    return cross_scan, cross_merge
