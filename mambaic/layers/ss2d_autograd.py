"""SS2D's steps in training, keeping fewer maps for the backward than the modules do.

Under autograd, each (batch, d_inner, H, W) map an op keeps costs as much as a map of the forward;
in a training step SS2D keeps half of the model's saved activations. The functions below run the
modules' own sequence of calls in their forward, so the outputs are the plain path's bit for bit,
and recompute cheap element-wise steps (and a depthwise convolution) in their backward; the
gradients are autograd's formulas on recomputed values.

- ``conv_silu``: ``silu(conv2d(u0))`` keeps u0 (which the conv keeps anyway), not the conv's
  output as well; its backward runs the depthwise 3x3 conv again.
- ``core_recomputes_input``: while the core runs, a tensor it saves that is ``u = conv_silu(u0)``
  itself is kept as a recipe and rebuilt from u0 (kept by conv_silu) when the backward unpacks it,
  whichever backend runs the core: one map less for one more depthwise conv and SiLU.
- ``recomputed_when_saved``: the same for any tensor with a cheap, exact recipe; SS2D uses it for
  its normalised input h = norm(x) (x is kept by the norm), which the u matmul and the tail keep.
- ``gated_output``: the tail ``out_proj(out_norm(y) * silu(h W_z^T))`` keeps ``y`` and SS2D's
  input ``h``, which in_proj's u half keeps anyway; as modules it kept five maps (zp, out_norm's
  input and output, silu's output, the product). The z half of in_proj and the layer
  norm's statistics are recomputed (the same kernels on the same inputs: the same bits); the
  output projection's matmul is not run again.

What a training step saves for its backward (bench/saved_activations.py, batch 2 of 256x256):
5.08 GiB with the modules, 3.28 with conv_silu and a tail keeping zp, 2.83 with the tail above,
2.38 with u rebuilt, 2.15 with h rebuilt as well.
"""

from __future__ import annotations

import contextlib

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


def _identity(t: torch.Tensor) -> tuple:
    """What tells a tensor apart without holding it (a hook holding u would keep it alive)."""
    return t.untyped_storage().data_ptr(), tuple(t.shape), t.stride(), t.storage_offset(), t.dtype


class _Rebuild:
    """What a saved-tensor hook keeps in place of a tensor: the function that makes it again."""

    def __init__(self, rebuild):
        self.rebuild = rebuild


class _Outer:
    """A saved tensor as the enclosing hooks packed it."""

    def __init__(self, packed):
        self.packed = packed


def recomputed_when_saved(*targets):
    """A context in which autograd does not keep the given tensors for the backward: ``targets`` are
    (tensor, rebuild) pairs, and a saved tensor that is one of those tensors itself (the same
    storage, shape, strides and offset) is kept as its ``rebuild`` function, which the backward calls
    (without autograd) when it unpacks it. rebuild must give the same bits (the same calls on
    tensors kept anyway) and must not hold its tensor. Other saved tensors go to the enclosing
    saved-tensor hooks, if any (``torch.autograd.graph.save_on_cpu``, a memory census), as
    torch.utils.checkpoint does. Under torch.compile it does nothing: Dynamo does not trace
    saved-tensor hooks, and AOT autograd's partitioner chooses what to keep itself."""
    if torch.compiler.is_compiling():
        return contextlib.nullcontext()
    recipes = {_identity(t): _Rebuild(rebuild) for t, rebuild in targets}
    outer = torch._C._autograd._top_saved_tensors_default_hooks(False)  # (pack, unpack) or None

    def pack(t: torch.Tensor):
        recipe = recipes.get(_identity(t))
        if recipe is not None:
            return recipe
        return t if outer is None else _Outer(outer[0](t))

    def unpack(saved):
        if isinstance(saved, _Outer):
            return outer[1](saved.packed)
        if not isinstance(saved, _Rebuild):
            return saved
        with torch.no_grad():
            return saved.rebuild()

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


def core_recomputes_input(u0: torch.Tensor, u: torch.Tensor, conv: torch.nn.Conv2d):
    """A context for the core's call on ``u = conv_silu(u0, conv)``: if the core saves u itself, the
    backward gets ``silu(conv(u0))`` computed again (u0 is kept by conv_silu)."""
    u0, weight, bias = u0.detach(), conv.weight.detach(), None if conv.bias is None else conv.bias.detach()
    padding, groups = conv.padding, conv.groups
    return recomputed_when_saved((u, lambda: F.silu(F.conv2d(u0, weight, bias, padding=padding, groups=groups))))


class GatedOutput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, h, z_weight, norm_weight, norm_bias, eps: float, proj_weight):
        zp = F.linear(h, z_weight)
        normed = F.layer_norm(y, (y.shape[-1],), norm_weight, norm_bias, eps)
        out = F.linear(normed * F.silu(zp), proj_weight)
        ctx.save_for_backward(y, h, z_weight, norm_weight, norm_bias, proj_weight)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad):
        y, h, z_weight, norm_weight, norm_bias, proj_weight = ctx.saved_tensors
        needs_y, needs_h, needs_zw, needs_nw, needs_nb, _, needs_pw = ctx.needs_input_grad
        channels = y.shape[-1]
        zp = F.linear(h, z_weight)  # again: the same bits
        normed, mean, rstd = torch.ops.aten.native_layer_norm(y, [channels], norm_weight, norm_bias, ctx.eps)
        z = F.silu(zp)
        d_proj_weight = None
        if needs_pw:
            gated = normed * z
            d_proj_weight = grad.reshape(-1, grad.shape[-1]).t().matmul(gated.reshape(-1, channels))
            del gated
        d_gated = grad.matmul(proj_weight)  # F.linear's input gradient
        d_h = d_z_weight = None
        if needs_h or needs_zw:
            s = torch.sigmoid(zp)
            d_zp = d_gated * normed * (s * (1 + zp * (1 - s)))  # silu'(zp), as autograd computes it
            del s
            if needs_h:
                d_h = d_zp.matmul(z_weight)
            if needs_zw:
                d_z_weight = d_zp.reshape(-1, channels).t().matmul(h.reshape(-1, h.shape[-1]))
            del d_zp
        del zp
        d_y = d_nw = d_nb = None
        if needs_y or needs_nw or needs_nb:
            d_y, d_nw, d_nb = torch.ops.aten.native_layer_norm_backward(
                d_gated * z, y, [channels], mean, rstd, norm_weight, norm_bias, [needs_y, needs_nw, needs_nb])
        return d_y, d_h, d_z_weight, d_nw, d_nb, None, d_proj_weight


def gated_output(y: torch.Tensor, h: torch.Tensor, z_weight: torch.Tensor, norm: torch.nn.LayerNorm,
                 proj: torch.nn.Linear) -> torch.Tensor:
    """``proj(norm(y) * silu(F.linear(h, z_weight)))`` keeping only ``y`` and ``h`` for the backward
    (proj has no bias; z_weight: the z half of SS2D's in_proj)."""
    return GatedOutput.apply(y, h, z_weight, norm.weight, norm.bias, norm.eps, proj.weight)
