"""Layers of MambaIC. The SS2D core and the window attention run through ``mambaic_kernels`` ops."""

from .conv import CheckerboardMaskedConv2d, conv, deconv
from .ss2d import SS2D
from .vss_block import DropPath, VSSBlock
from .window_attention import SwinBlock, SwinLayer, SWAtten, WindowAttention

__all__ = [
    "CheckerboardMaskedConv2d",
    "DropPath",
    "SS2D",
    "SWAtten",
    "SwinBlock",
    "SwinLayer",
    "VSSBlock",
    "WindowAttention",
    "conv",
    "deconv",
]
