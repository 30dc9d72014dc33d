"""`torch` backend of window_attention: partition, one fused SDPA call with an additive bias, merge.

The bias (relative positions plus the shifted-window mask as -inf) is gathered per call from the
small table; the index tensors and masks behind it are built once per (window, map size, device)
and cached.
"""

import functools

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=None)
def _relative_index(window: int, device: torch.device) -> torch.Tensor:
    """(w*w, w*w) long index into the flattened (2w-1)^2 table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"), -1).reshape(-1, 2)
    rel = coords[:, None, :] - coords[None, :, :] + window - 1
    return (rel[..., 0] * (2 * window - 1) + rel[..., 1]).to(device)


@functools.lru_cache(maxsize=None)
def _edge_masks(window: int, device: torch.device) -> torch.Tensor:
    """(4, w*w, w*w) bool masks by window kind: 0 inner, 1 last row, 2 last column, 3 both."""
    s = window - window // 2
    p = torch.arange(window)
    cross = (p[:, None] < s) != (p[None, :] < s)  # (w, w): query and key on opposite sides of s
    row = cross[:, None, :, None].expand(window, window, window, window).reshape(window * window, -1)
    col = cross[None, :, None, :].expand(window, window, window, window).reshape(window * window, -1)
    return torch.stack([torch.zeros_like(row), row, col, row | col]).to(device)


@functools.lru_cache(maxsize=64)
def window_mask(n_rows: int, n_cols: int, window: int, device: torch.device) -> torch.Tensor:
    """(windows, w*w, w*w) bool, True = masked: the official generate_mask.

    Cached per map size and device: built on the host, it would otherwise cost a host-to-device
    copy (a synchronisation) in every call.
    """
    kind = torch.zeros(n_rows, n_cols, dtype=torch.long)
    kind[-1, :] += 1
    kind[:, -1] += 2
    return _edge_masks(window, device)[kind.reshape(-1).to(device)]


def window_attention(qkv, rel_pos_bias, heads, window, shifted):
    batch, H, W, C3 = qkv.shape
    dim = C3 // 3
    head_dim = dim // heads
    n_rows, n_cols = H // window, W // window
    tokens = window * window
    shift = window // 2
    if shifted:
        qkv = torch.roll(qkv, shifts=(-shift, -shift), dims=(1, 2))
    t = qkv.reshape(batch, n_rows, window, n_cols, window, 3, heads, head_dim)
    t = t.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, batch * n_rows * n_cols, heads, tokens, head_dim)
    bias = rel_pos_bias.reshape(heads, -1)[:, _relative_index(window, qkv.device)].to(qkv.dtype)  # (heads, T, T)
    if shifted:
        mask = window_mask(n_rows, n_cols, window, qkv.device)  # (windows, T, T)
        bias = bias[None].masked_fill(mask[:, None], float("-inf"))  # (windows, heads, T, T)
        bias = bias.repeat(batch, 1, 1, 1)
    out = F.scaled_dot_product_attention(t[0], t[1], t[2], attn_mask=bias, scale=head_dim**-0.5)
    out = out.reshape(batch, n_rows, n_cols, heads, window, window, head_dim)
    out = out.permute(0, 1, 4, 2, 5, 3, 6).reshape(batch, H, W, dim)
    if shifted:
        out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
    return out
