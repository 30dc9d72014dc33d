"""VSSBlock: a pre-norm residual block around SS2D (VMamba's visual state-space block).

    x ── LayerNorm ── SS2D ── DropPath ──(+)── out
    └──────────────────────────────────────┘

The block takes and returns channel-first maps (batch, C, H, W), as the convolutions around it in
MambaIC's transforms do, and works channel-last inside. Feeding it a ``channels_last`` tensor
makes both permutes free (see :class:`mambaic.models.MambaIC`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .ss2d import SS2D


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a whole sample's branch with probability p, rescale the others by 1/(1-p)."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class DropPath(nn.Module):
    """Module form of :func:`drop_path` (no parameters, so nothing in the state dict)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class VSSBlock(nn.Module):
    """``x + DropPath(SS2D(LayerNorm(x)))`` on a (batch, C, H, W) map.

    Args:
        hidden_dim: C.
        drop_path: stochastic-depth probability of the SS2D branch (training only).
        d_state, ssm_ratio: passed to :class:`SS2D`.
    """

    def __init__(self, hidden_dim: int, drop_path: float = 0.0, d_state: int = 16, ssm_ratio: float = 2.0):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_dim)
        self.op = SS2D(hidden_dim, d_state=d_state, ssm_ratio=ssm_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (batch, H, W, C): a view, contiguous if x is channels_last
        x = x + self.drop_path(self.op(x, norm=self.norm))  # SS2D applies the norm: see its forward
        return x.permute(0, 3, 1, 2)
