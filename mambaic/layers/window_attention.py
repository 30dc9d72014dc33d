"""Swin-style window attention and the SWAtten block of MambaIC's channel-wise entropy model.

    WindowAttention   embedding linear -> mambaic_kernels.window_attention -> output linear
    SwinLayer         x + WA(LN(x)), then x + MLP(LN(x))               (official ``Block``)
    SwinBlock         a regular-window layer, then a shifted-window layer
    SWAtten           1x1 in, CompressAI's attention gating with a SwinBlock as its
                      non-local branch, residual, 1x1 out

Attribute names follow the official checkpoints (``embedding_layer``, ``relative_position_params``,
``linear``, ``ln1``, ``msa``, ``ln2``, ``mlp``, ``block_1``, ``block_2``, ``non_local_block``,
``in_conv``, ``out_conv``). The window partition, the relative-position bias, the cyclic shift
and its mask all live in the ``window_attention`` op: nothing is rebuilt here per call.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from compressai.layers import AttentionBlock

import mambaic_kernels as mk


class WindowAttention(nn.Module):
    """Multi-head self-attention in window x window tiles of a (batch, H, W, dim) map.

    Args:
        dim: channels in and out.
        head_dim: channels per head; heads = dim // head_dim.
        window: tile side (H and W must be multiples of it).
        shifted: shift the tiles by window // 2 (the "SW" type of the official code).
    """

    def __init__(self, dim: int, head_dim: int, window: int, shifted: bool):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"WindowAttention: dim must be a multiple of head_dim={head_dim}, got {dim}")
        self.heads, self.window, self.shifted = dim // head_dim, window, shifted
        self.embedding_layer = nn.Linear(dim, 3 * dim)  # -> (q | k | v, head, head_dim)
        table = torch.empty(self.heads, 2 * window - 1, 2 * window - 1)
        # N(0, 0.02) truncated to +-2 (the official trunc_normal_(std=.02): 100 std, never reached).
        # Drawn with normal_, not trunc_normal_, whose sampler changed in torch 2.14: the same
        # seed then gives the same weights on every torch version (random_model, golden tests).
        self.relative_position_params = nn.Parameter(table.normal_(0.0, 0.02).clamp_(-2.0, 2.0))
        self.linear = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The embedding is per token, so applying it before the op's roll and partition is the
        # same computation as the official's (which embeds after partitioning).
        qkv = self.embedding_layer(x)
        out = mk.window_attention(qkv, self.relative_position_params, self.heads, self.window, shifted=self.shifted)
        return self.linear(out)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, window={self.window}, shifted={self.shifted}"


class SwinLayer(nn.Module):
    """Pre-norm transformer layer on (batch, H, W, dim): window attention, then a 4x MLP."""

    def __init__(self, dim: int, head_dim: int, window: int, shifted: bool):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.msa = WindowAttention(dim, head_dim, window, shifted)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.msa(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class SwinBlock(nn.Module):
    """A regular-window then a shifted-window layer, on channel-first maps (batch, dim, H, W).

    The official code pads maps whose side is at most one window (and then fails on the padded
    size); here every side must be a positive multiple of the window, which MambaIC guarantees by
    padding the image (see ``docs/model.md``).
    """

    def __init__(self, dim: int, head_dim: int, window: int):
        super().__init__()
        self.block_1 = SwinLayer(dim, head_dim, window, shifted=False)
        self.block_2 = SwinLayer(dim, head_dim, window, shifted=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (batch, H, W, dim)
        x = self.block_2(self.block_1(x))
        return x.permute(0, 3, 1, 2)


class SWAtten(AttentionBlock):
    """Swin-window attention block (MambaIC's SWAtten), at ``inter_dim`` channels inside.

        x ── in_conv ──┬── conv_a ─────────────────────────(*)──(+)── out_conv ── out
                       ├── SwinBlock ── conv_b ── sigmoid ──┘    │
                       └─────────────────────────────────────────┘

    ``conv_a`` and ``conv_b`` are CompressAI's :class:`AttentionBlock` residual stacks.
    """

    def __init__(self, in_dim: int, out_dim: int, inter_dim: int = 128, head_dim: int = 16, window: int = 8):
        super().__init__(N=inter_dim)
        self.non_local_block = SwinBlock(inter_dim, head_dim, window)
        self.in_conv = nn.Conv2d(in_dim, inter_dim, kernel_size=1)
        self.out_conv = nn.Conv2d(inter_dim, out_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_conv(x)
        gate = torch.sigmoid(self.conv_b(self.non_local_block(x)))
        out = self.conv_a(x) * gate + x
        return self.out_conv(out)
