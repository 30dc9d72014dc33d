"""`torch` backend of cross_scan / cross_merge: views, flips and one transpose; autograd is PyTorch's.

Traffic: cross_scan reads the map once and writes 4 copies (5 x map bytes); cross_merge reads 4
sequences and writes one map (5 x map bytes), plus one temporary for the transposed half.
"""

import torch


def cross_scan(x: torch.Tensor, channel_last: bool) -> torch.Tensor:
    if channel_last:
        x = x.permute(0, 3, 1, 2)
    batch, dim, H, W = x.shape
    rows = x.reshape(batch, dim, H * W)
    cols = x.transpose(2, 3).reshape(batch, dim, H * W)
    half = torch.stack([rows, cols], dim=1)  # (batch, 2, dim, L)
    return torch.cat([half, half.flip(-1)], dim=1)


def cross_merge(y: torch.Tensor, channel_last: bool) -> torch.Tensor:
    batch, K, dim, H, W = y.shape
    seq = y.reshape(batch, K, dim, H * W)
    half = seq[:, 0:2] + seq[:, 2:4].flip(-1)  # undo the reversal: (batch, 2, dim, L)
    # direction 1 holds column-major order: view it as (W, H) and transpose back to row-major
    out = half[:, 0] + half[:, 1].reshape(batch, dim, W, H).transpose(2, 3).reshape(batch, dim, H * W)
    return out.transpose(1, 2) if channel_last else out
