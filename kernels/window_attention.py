"""window_attention: Swin-style (shifted) window multi-head attention, between the two linears."""

from __future__ import annotations

import torch

from . import _backend, _checks


def window_attention(
    qkv: torch.Tensor,
    rel_pos_bias: torch.Tensor,
    heads: int,
    window: int = 8,
    *,
    shifted: bool = False,
) -> torch.Tensor:
    """Multi-head self-attention inside window x window tiles of a feature map.

    Args:
        qkv: (batch, H, W, 3*dim): the embedding layer's output in spatial layout, channels
            ordered (q|k|v, head, head_dim); H and W multiples of ``window``; contiguous.
        rel_pos_bias: (heads, 2*window-1, 2*window-1), the official ``relative_position_params``.
        heads: number of heads; must divide dim. head_dim = dim // heads.
        window: the window side (MambaIC: 8).
        shifted: cyclic shift by window//2 before and back after, with the official
            shifted-window mask (only the last row and column of windows are masked).

    Returns:
        (batch, H, W, dim) in qkv's dtype: softmax(q k^T / sqrt(head_dim) + bias) v per window,
        heads concatenated, before the output projection. Empty for an empty batch (and then
        rel_pos_bias's gradient is zero).

    Example:
        >>> qkv = torch.randn(2, 16, 24, 3 * 32)
        >>> window_attention(qkv, torch.randn(2, 15, 15), heads=2, shifted=True).shape
        torch.Size([2, 16, 24, 32])
    """
    op = "window_attention"
    _checks.tensor(op, "qkv", qkv, ndim=4)
    _checks.positive_int(op, "heads", heads)
    _checks.positive_int(op, "window", window)
    batch, H, W, C3 = qkv.shape
    if C3 == 0 or C3 % (3 * heads) != 0:  # no channels would give head_dim 0, and a scale of 0 ** -0.5
        raise ValueError(
            f"{op}: qkv's last dim must be 3 * heads * head_dim, a positive multiple of {3 * heads}, got {C3}"
        )
    if H % window or W % window or H == 0 or W == 0:
        raise ValueError(
            f"{op}: qkv's H and W must be positive multiples of window={window}, got H={H}, W={W}; pad the map first"
        )
    _checks.tensor(op, "rel_pos_bias", rel_pos_bias)
    _checks.shape(op, "rel_pos_bias", rel_pos_bias, (heads, 2 * window - 1, 2 * window - 1), "(heads, 2w-1, 2w-1)")
    _checks.same_device(op, "qkv", qkv, rel_pos_bias=rel_pos_bias)
    _checks.contiguous(op, "qkv", qkv)
    _checks.contiguous(op, "rel_pos_bias", rel_pos_bias)
    fn = _backend.resolve(op, **_checks.meta(qkv, window=window, head_dim=C3 // 3 // heads))
    if batch == 0:
        # No image, no window: an empty output, the same in every backend, before any of them runs
        # (the torch backend's SDPA left rel_pos_bias out of the graph). Made from both inputs, so
        # that autograd gives each its gradient: empty for qkv, zeros for rel_pos_bias.
        return qkv.reshape(0, H, W, C3 // 3) + rel_pos_bias.sum()
    return fn(qkv, rel_pos_bias, heads, window, bool(shifted))


def register_backward(forward_op: str, backward_op) -> None:
    """Join a compiled backend's forward op ``forward_op`` (qkv, rel_pos_bias, heads, window,
    shifted) to ``backward_op`` (grad, qkv, rel_pos_bias, heads, window, shifted) -> (d qkv,
    d rel_pos_bias) through torch.library.register_autograd; the backward keeps qkv and the table."""

    def setup_context(ctx, inputs, output):
        qkv, rel_pos_bias, heads, window, shifted = inputs
        ctx.save_for_backward(qkv, rel_pos_bias)
        ctx.args = (heads, window, shifted)

    def backward(ctx, grad):
        qkv, rel_pos_bias = ctx.saved_tensors
        dqkv, dbias = backward_op(grad.contiguous(), qkv, rel_pos_bias, *ctx.args)
        return dqkv, dbias, None, None, None

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)
