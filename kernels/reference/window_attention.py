"""Reference window attention: the official MambaIC WMSA between its two linear layers.

qkv (batch, H, W, 3*dim), channels ordered (q|k|v, head, head_dim) -> (batch, H, W, dim).
Steps: cyclic shift by -window//2 (shifted only), partition into window x window tiles,
softmax(q k^T / sqrt(head_dim) + relative position bias [+ mask]) v, reverse partition and shift.
The shifted mask is the official ``generate_mask``: only the last row and the last column of
windows are masked, between the tokens that the cyclic shift brought from opposite edges.
"""

import torch


def relative_position_bias(table: torch.Tensor, window: int) -> torch.Tensor:
    """(heads, 2w-1, 2w-1) table -> (heads, w*w, w*w) bias[h, p, q] = table[h, pi-qi+w-1, pj-qj+w-1]."""
    steps = torch.arange(window, device=table.device)  # made there: a copy could not be captured in a CUDA graph
    coords = torch.stack(torch.meshgrid(steps, steps, indexing="ij"), -1).reshape(-1, 2)  # (w*w, 2): (row, col)
    rel = coords[:, None, :] - coords[None, :, :] + window - 1  # (w*w, w*w, 2)
    return table[:, rel[..., 0], rel[..., 1]]


def shifted_window_mask(n_rows: int, n_cols: int, window: int, device=None) -> torch.Tensor:
    """(n_rows*n_cols, w*w, w*w) bool, True where attention is forbidden (official generate_mask)."""
    s = window - window // 2
    m = torch.zeros(n_rows, n_cols, window, window, window, window, dtype=torch.bool, device=device)
    m[-1, :, :s, :, s:, :] = True
    m[-1, :, s:, :, :s, :] = True
    m[:, -1, :, :s, :, s:] = True
    m[:, -1, :, s:, :, :s] = True
    return m.reshape(n_rows * n_cols, window * window, window * window)


def window_attention(qkv, rel_pos_bias, heads, window=8, shifted=False):
    out_dtype = qkv.dtype
    f = torch.float64 if qkv.dtype == torch.float64 else torch.float32
    qkv = qkv.to(f)
    batch, H, W, C3 = qkv.shape
    dim = C3 // 3
    head_dim = dim // heads
    n_rows, n_cols = H // window, W // window
    shift = window // 2
    if shifted:
        qkv = torch.roll(qkv, shifts=(-shift, -shift), dims=(1, 2))
    # (batch, n_rows, w, n_cols, w, 3, heads, hd) -> (3, batch, heads, windows, w*w, hd)
    t = qkv.reshape(batch, n_rows, window, n_cols, window, 3, heads, head_dim)
    t = t.permute(5, 0, 6, 1, 3, 2, 4, 7).reshape(3, batch, heads, n_rows * n_cols, window * window, head_dim)
    q, k, v = t[0], t[1], t[2]
    sim = torch.einsum("bhwpc,bhwqc->bhwpq", q, k) * head_dim**-0.5
    sim = sim + relative_position_bias(rel_pos_bias.to(f), window)[None, :, None]
    if shifted:
        sim = sim.masked_fill(shifted_window_mask(n_rows, n_cols, window, qkv.device), float("-inf"))
    out = torch.einsum("bhwpq,bhwqc->bhwpc", sim.softmax(-1), v)  # (batch, heads, windows, w*w, hd)
    out = out.reshape(batch, heads, n_rows, n_cols, window, window, head_dim)
    out = out.permute(0, 2, 4, 3, 5, 1, 6).reshape(batch, H, W, dim)
    if shifted:
        out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
    return out.to(out_dtype)
