"""`cuda` backend of window_attention: the kernels of csrc/window_attention_{fwd,bwd}.cu, one block
of four warps per (image, window, head), the products on tensor cores (mma.sync on tf32 operands
split in three: float32 accuracy; the algorithm: csrc/window_attention.cuh, mma_tf32.cuh).

float32 / float16 / bfloat16 qkv, float32 arithmetic; the bias table is passed as float32 and its
gradient comes back as one partial per (image, window), summed here in a fixed order. Windows up
to 8 x 8 (64 query rows: four warps of 16) and head_dim up to 32 (the widest head the kernels are
built for); other calls go to the next backend under auto, or fail with that reason when cuda is
asked for.
"""

from __future__ import annotations

import torch

from .. import _backend
from .._backend import direct_launch_ok
from ..window_attention import register_backward
from . import _ext, supports_device

_MAX_WINDOW, _MAX_HEAD_DIM = 8, 32  # csrc/window_attention.h: kMaxWindow, kMaxHeadDim


def _table32(rel_pos_bias: torch.Tensor) -> torch.Tensor:
    """The bias table as the kernels read it: float32, contiguous (a no-op for the model's own)."""
    return rel_pos_bias.float().contiguous()


@torch.library.custom_op("mambaic::window_attention_fwd_cuda", mutates_args=())
def window_attention_fwd_cuda(qkv: torch.Tensor, rel_pos_bias: torch.Tensor, heads: int, window: int,
                              shifted: bool) -> torch.Tensor:
    """(batch, H, W, dim) from qkv (batch, H, W, 3 dim), in qkv's dtype."""
    return _ext.window_attention_fwd(qkv, _table32(rel_pos_bias), heads, window, shifted)


@window_attention_fwd_cuda.register_fake
def _(qkv, rel_pos_bias, heads, window, shifted):
    batch, H, W, C3 = qkv.shape
    return qkv.new_empty((batch, H, W, C3 // 3))


@torch.library.custom_op("mambaic::window_attention_bwd_cuda", mutates_args=())
def window_attention_bwd_cuda(grad: torch.Tensor, qkv: torch.Tensor, rel_pos_bias: torch.Tensor, heads: int,
                              window: int, shifted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(d qkv in qkv's dtype, d rel_pos_bias in its dtype)."""
    dqkv, parts = _ext.window_attention_bwd(grad.to(qkv.dtype).contiguous(), qkv, _table32(rel_pos_bias),
                                            heads, window, shifted)
    return dqkv, parts.sum(0).to(rel_pos_bias.dtype)


@window_attention_bwd_cuda.register_fake
def _(grad, qkv, rel_pos_bias, heads, window, shifted):
    return torch.empty_like(qkv), torch.empty_like(rel_pos_bias)


register_backward("mambaic::window_attention_fwd_cuda", window_attention_bwd_cuda)


def window_attention(qkv, rel_pos_bias, heads, window, shifted):
    """The backend entry point registered with _backend (arguments already checked)."""
    if direct_launch_ok(qkv, rel_pos_bias):
        return _ext.window_attention_fwd(qkv, _table32(rel_pos_bias), heads, window, shifted)
    return torch.ops.mambaic.window_attention_fwd_cuda(qkv, rel_pos_bias, heads, window, shifted)


def supports(device: str, dtype: torch.dtype, window: int | None = None, head_dim: int | None = None, **_) -> str | None:
    why = supports_device(device, dtype)
    if why is not None:
        return why
    if window is not None and window > _MAX_WINDOW:
        return f"the cuda window_attention kernels take 64 tokens a window, window <= {_MAX_WINDOW}, got window={window}"
    if head_dim is not None and head_dim > _MAX_HEAD_DIM:
        return (f"the cuda window_attention kernels are built for head_dim <= {_MAX_HEAD_DIM}, "
                f"got head_dim={head_dim}")
    return None


_backend.register("window_attention", "cuda", window_attention, supports)
