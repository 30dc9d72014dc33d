"""Reference cross-scan / cross-merge: the four scan orders of a 2D map, written as index maps.

Direction k of the scan visits the H x W positions in this order (l = 0 .. L-1, L = H*W):
  k=0 row-major       (h, w) at l = h*W + w
  k=1 column-major    (h, w) at l = w*H + h
  k=2 row-major reversed, k=3 column-major reversed: position l of k=0/1 lands at L-1-l.
"""

import torch


def scan_orders(H: int, W: int, device=None) -> torch.Tensor:
    """(4, L) long: entry [k, l] is the row-major index of the position that direction k visits at step l."""
    rows = torch.arange(H * W, device=device)  # row-major: index itself
    cols = torch.arange(H * W, device=device).view(H, W).t().reshape(-1)  # column-major visit order
    return torch.stack([rows, cols, rows.flip(0), cols.flip(0)])


def cross_scan(x: torch.Tensor, channel_last: bool = False) -> torch.Tensor:
    """(batch, dim, H, W) [or (batch, H, W, dim) with channel_last] -> (batch, 4, dim, L)."""
    if channel_last:
        x = x.permute(0, 3, 1, 2)
    batch, dim, H, W = x.shape
    flat = x.reshape(batch, dim, H * W)  # (batch, dim, L) row-major
    order = scan_orders(H, W, x.device)  # (4, L)
    return torch.stack([flat[:, :, order[k]] for k in range(4)], dim=1)


def cross_merge(y: torch.Tensor, channel_last: bool = False) -> torch.Tensor:
    """(batch, 4, dim, H, W), each direction in its own scan order -> (batch, dim, L) [or (batch, L, dim)].

    Output position p sums the four directions' values at the steps where they visit p: the
    adjoint of :func:`cross_scan`.
    """
    batch, K, dim, H, W = y.shape
    seq = y.reshape(batch, K, dim, H * W)
    order = scan_orders(H, W, y.device)
    out = seq.new_zeros(batch, dim, H * W)
    for k in range(4):
        out = out.index_add(2, order[k], seq[:, k])  # out[..., order[k][l]] += seq[:, k, :, l]
    return out.transpose(1, 2) if channel_last else out
