"""Two steps of SS2D as autograd functions that keep fewer maps for the backward than the modules do.

Under autograd, each (batch, d_inner, H, W) map an op keeps costs as much as a map of the forward;
in a training step SS2D keeps half of the model's saved activations. Both functions below run the
modules' own sequence of calls in their forward, so the outputs are the plain path's bit for bit,
and recompute cheap element-wise steps (and a depthwise convolution) in their backward; the
gradients are autograd's formulas on recomputed values.

- ``conv_silu``: ``silu(conv2d(u0))`` keeps u0 (which the conv keeps anyway), not the conv's
  output as well; its backward runs the depthwise 3x3 conv again.
- ``gated_output``: the tail ``out_proj(out_norm(y) * silu(zp))`` keeps ``y`` and ``zp``; as
  modules it kept five maps (out_norm's input and output, silu's input and output, the product).
  The layer norm's statistics are recomputed (the same kernel on the same input: the same bits);
  the projection's matmul is not run again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class ConvSilu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u0, weight, bias, padding: int, groups: int):
        ctx.save_for_backward(u0, weight, bias)
        ctx.padding, ctx.groups = padding, groups
        return F.silu(F.conv2d(u0, weight, bias, padding=padding, groups=groups))

    @staticmethod
    def backward(ctx, grad):
        u0, weight, bias = ctx.saved_tensors
        c = F.conv2d(u0, weight, bias, padding=ctx.padding, groups=ctx.groups)  # again: the same bits
        s = torch.sigmoid(c)
        d_c = grad * (s * (1 + c * (1 - s)))  # silu'(c), as autograd computes it
        del c, s
        needs = ctx.needs_input_grad[:3]
        d_u0, d_weight, d_bias = torch.ops.aten.convolution_backward(
            d_c, u0, weight, [weight.shape[0]] if bias is not None else None, [1, 1], [ctx.padding] * 2, [1, 1],
            False, [0, 0], ctx.groups, [needs[0], needs[1], needs[2] and bias is not None])
        return d_u0, d_weight, d_bias, None, None


def conv_silu(u0: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """``silu(conv(u0))`` keeping only ``u0`` for the backward (conv: SS2D's padded depthwise conv)."""
    if conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.padding_mode != "zeros" or len(set(conv.padding)) != 1:
        raise ValueError(f"conv_silu takes a stride-1, undilated conv with equal zero padding, got {conv}")
    return ConvSilu.apply(u0, conv.weight, conv.bias, conv.padding[0], conv.groups)


class GatedOutput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, zp, norm_weight, norm_bias, eps: float, proj_weight):
        normed = F.layer_norm(y, (y.shape[-1],), norm_weight, norm_bias, eps)
        out = F.linear(normed * F.silu(zp), proj_weight)
        ctx.save_for_backward(y, zp, norm_weight, norm_bias, proj_weight)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad):
        y, zp, norm_weight, norm_bias, proj_weight = ctx.saved_tensors
        needs_y, needs_zp, needs_nw, needs_nb, _, needs_pw = ctx.needs_input_grad
        channels = y.shape[-1]
        normed, mean, rstd = torch.ops.aten.native_layer_norm(y, [channels], norm_weight, norm_bias, ctx.eps)
        z = F.silu(zp)
        d_proj_weight = None
        if needs_pw:
            gated = normed * z
            d_proj_weight = grad.reshape(-1, grad.shape[-1]).t().matmul(gated.reshape(-1, channels))
            del gated
        d_gated = grad.matmul(proj_weight)  # F.linear's input gradient
        d_zp = None
        if needs_zp:
            s = torch.sigmoid(zp)
            d_zp = d_gated * normed * (s * (1 + zp * (1 - s)))  # silu'(zp), as autograd computes it
        d_y = d_nw = d_nb = None
        if needs_y or needs_nw or needs_nb:
            d_y, d_nw, d_nb = torch.ops.aten.native_layer_norm_backward(
                d_gated * z, y, [channels], mean, rstd, norm_weight, norm_bias, [needs_y, needs_nw, needs_nb])
        return d_y, d_zp, d_nw, d_nb, None, d_proj_weight


def gated_output(y: torch.Tensor, zp: torch.Tensor, norm: torch.nn.LayerNorm, proj: torch.nn.Linear) -> torch.Tensor:
    """``proj(norm(y) * silu(zp))`` keeping only ``y`` and ``zp`` for the backward (proj has no bias)."""
    return GatedOutput.apply(y, zp, norm.weight, norm.bias, norm.eps, proj.weight)
