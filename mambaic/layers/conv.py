"""Convolutions of MambaIC: "same" strided conv / transposed conv, and the checkerboard context conv."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv(in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 2) -> nn.Conv2d:
    """Convolution that divides H and W by ``stride`` (padding kernel_size // 2)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)


def deconv(in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    """Transposed convolution that multiplies H and W by ``stride`` exactly."""
    return nn.ConvTranspose2d(
        in_channels, out_channels, kernel_size, stride=stride, output_padding=stride - 1, padding=kernel_size // 2
    )


def checkerboard_kernel_mask(kernel_size: int) -> torch.Tensor:
    """(k, k) float mask, 1 where (row + col) is odd: a kernel centred on any position then reads
    only positions of the other checkerboard colour (with k = 5, row 0 is 0 1 0 1 0)."""
    idx = torch.arange(kernel_size)
    return ((idx[:, None] + idx[None, :]) % 2).float()


class CheckerboardMaskedConv2d(nn.Conv2d):
    """Conv2d whose kernel only sees the anchors when predicting a non-anchor (He et al. 2021).

    The mask is a buffer saved in the state dict (the official checkpoints carry it as
    ``context_prediction.<i>.mask``). The official layer multiplies its weight by the mask in
    place at every call; we convolve with ``weight * mask`` instead, which gives the same output
    without mutating the parameter.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        mask = checkerboard_kernel_mask(kernel_size).expand_as(self.weight).clone()
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding)
