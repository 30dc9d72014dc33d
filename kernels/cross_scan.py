"""cross_scan / cross_merge: the four 1D scan orders of a 2D feature map, and their adjoint."""

from __future__ import annotations

import torch

from . import _backend, _checks


def cross_scan(x: torch.Tensor, *, channel_last: bool = False) -> torch.Tensor:
    """Unfold a 2D map into the four scan sequences of VMamba's SS2D.

    Args:
        x: (batch, dim, H, W), or (batch, H, W, dim) with ``channel_last=True``; float32,
            float16 or bfloat16; contiguous.
        channel_last: the layout of ``x`` (the layout of the output does not change).

    Returns:
        (batch, 4, dim, L) with L = H*W, in ``x``'s dtype. Direction 0 is row-major, 1
        column-major, 2 and 3 are 0 and 1 reversed. Empty (and its gradient too) when batch, dim,
        H or W is 0.

    Example:
        >>> x = torch.randn(2, 8, 5, 7)
        >>> cross_scan(x).shape
        torch.Size([2, 4, 8, 35])
    """
    op = "cross_scan"
    _checks.tensor(op, "x", x, ndim=4)
    _checks.contiguous(op, "x", x)
    fn = _backend.resolve(op, **_checks.meta(x))
    if x.numel() == 0:
        return _empty_output(x, scan_output_shape(x, channel_last))
    return fn(x, channel_last)


def cross_merge(y: torch.Tensor, *, channel_last: bool = False) -> torch.Tensor:
    """Fold the four scan sequences back onto the 2D map and sum them: the adjoint of cross_scan.

    Args:
        y: (batch, 4, dim, H, W), where y[:, k] holds direction k's sequence of length H*W in
            its own scan order (viewed as H x W only to carry the map's shape); contiguous.
        channel_last: return (batch, L, dim) instead of (batch, dim, L).

    Returns:
        (batch, dim, L) or (batch, L, dim), L = H*W, row-major positions, in ``y``'s dtype. Empty
        (and its gradient too) when batch, dim, H or W is 0.

    Example:
        >>> y = torch.randn(2, 4, 8, 5, 7)
        >>> cross_merge(y).shape
        torch.Size([2, 8, 35])
    """
    op = "cross_merge"
    _checks.tensor(op, "y", y, ndim=5)
    if y.shape[1] != 4:
        raise ValueError(f"{op}: y must have 4 scan directions in dim 1, got shape {tuple(y.shape)}")
    _checks.contiguous(op, "y", y)
    fn = _backend.resolve(op, **_checks.meta(y))
    if y.numel() == 0:
        batch, _, dim, H, W = y.shape
        return _empty_output(y, (batch, H * W, dim) if channel_last else (batch, dim, H * W))
    return fn(y, channel_last)


def scan_output_shape(x: torch.Tensor, channel_last: bool) -> tuple[int, int, int, int]:
    """(batch, 4, dim, H*W): cross_scan's output shape for the map x in either layout (from H and W,
    never numel // (batch * dim), which divides by zero for an empty batch or no channels)."""
    batch, dim, H, W = (x.shape[0], x.shape[3], *x.shape[1:3]) if channel_last else x.shape
    return batch, 4, dim, H * W


def _empty_output(t: torch.Tensor, shape: tuple) -> torch.Tensor:
    """The op's empty output for an empty input (no batch, no channels or no positions), the same
    in every backend and decided before any of them runs (the cpu backend's fake kernel divided by
    zero on such shapes under torch.compile). A reshape of the input rather than a new tensor, so
    that autograd still reaches the input and gives it its (empty) gradient."""
    return t.reshape(shape)
