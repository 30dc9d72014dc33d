"""The checkerboard split of a latent (He et al., "Checkerboard Context Model for Efficient Learned
Image Compression", CVPR 2021), with the conventions of the official MambaIC code.

Decode order inside one slice (A = anchor, decoded first from the hyperprior and the previous
slices; n = non-anchor, decoded second, also conditioned on the anchors through a masked conv)::

    column  0 1 2 3 4 5
    row 0   A n A n A n
    row 1   n A n A n A
    row 2   A n A n A n

Anchors are the positions with (row + col) even. For entropy coding, each colour is packed into a
(batch, C, H, W / 2) tensor by taking, in every row, the columns of that colour, left to right;
this is the symbol order of the official bitstreams. W must be even.
"""

from __future__ import annotations

import torch

ANCHOR, NON_ANCHOR = 0, 1  # the parity of (row + col) of each colour


def pack(x: torch.Tensor, colour: int) -> torch.Tensor:
    """(batch, C, H, W) -> (batch, C, H, W/2): the positions of ``colour``, row by row."""
    batch, C, H, W = x.shape
    out = x.new_empty(batch, C, H, W // 2)
    out[:, :, 0::2] = x[:, :, 0::2, colour::2]  # even rows start at column `colour`
    out[:, :, 1::2] = x[:, :, 1::2, 1 - colour :: 2]  # odd rows at the other column
    return out


def unpack(packed: torch.Tensor, colour: int) -> torch.Tensor:
    """Inverse of :func:`pack`: (batch, C, H, W/2) -> (batch, C, H, W), zeros on the other colour."""
    batch, C, H, Wh = packed.shape
    out = packed.new_zeros(batch, C, H, 2 * Wh)
    out[:, :, 0::2, colour::2] = packed[:, :, 0::2]
    out[:, :, 1::2, 1 - colour :: 2] = packed[:, :, 1::2]
    return out


def keep(x: torch.Tensor, colour: int) -> torch.Tensor:
    """``x`` on the positions of ``colour``, zeros elsewhere."""
    return unpack(pack(x, colour), colour)


def merge(anchor: torch.Tensor, non_anchor: torch.Tensor) -> torch.Tensor:
    """One map taking ``anchor`` on the anchor positions and ``non_anchor`` on the others."""
    out = non_anchor.clone()
    out[:, :, 0::2, 0::2] = anchor[:, :, 0::2, 0::2]
    out[:, :, 1::2, 1::2] = anchor[:, :, 1::2, 1::2]
    return out
