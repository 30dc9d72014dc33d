"""SS2D's tail, ``out_proj(out_norm(y) * silu(zp))``, as one autograd function that keeps two maps.

Run as separate modules under autograd, the tail keeps five (batch, H, W, d_inner) maps for the
backward: out_norm's input, its output and silu's output (both for the product), silu's input, and
the product (out_proj's input). In a training step they are about 40% of SS2D's saved activations
(SS2D holds half of the model's). This function keeps out_norm's input ``y`` and silu's input ``zp``
and recomputes the rest, all element-wise, in its backward: the layer norm's statistics come out
the same bits (the same kernel on the same input), the projection's matmul is not run again.

Its forward is the modules' own sequence of calls, so the outputs are those of the plain path bit
for bit; the gradients are autograd's formulas evaluated on recomputed values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
