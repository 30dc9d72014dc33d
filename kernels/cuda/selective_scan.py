"""`cuda` backend of selective_scan: the kernels of csrc/selective_scan_fwd.cu and _bwd.cu.

``mambaic::selective_scan_fwd_cuda`` computes y in float32 (other dtypes are cast on the way in
and y cast back, as every backend does); with ``save_states`` it also returns the state entering
every tile of 512 steps, (batch, KD, tiles, N): 1/32 of u's size, all the backward keeps besides
the inputs. ``mambaic::selective_scan_bwd_cuda`` recomputes the states of each tile from them and
returns every gradient, accumulated in float32 (dB and dC with atomics: not bit-reproducible).
"""

from __future__ import annotations

import torch

from .. import _backend
from . import _ext, supports_device

_MAX_N = 16  # the kernels pad N up to 16 states in registers
TILE = _ext.scan_tile  # steps per tile: one saved state per tile (csrc/selective_scan.h: kScanTile)


def _f32(*tensors):
    return [None if t is None else t.to(torch.float32).contiguous() for t in tensors]


@torch.library.custom_op("mambaic::selective_scan_fwd_cuda", mutates_args=())
def selective_scan_fwd_cuda(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, delta_bias: torch.Tensor | None, delta_softplus: bool, save_states: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """y (batch, KD, L) in u's dtype, and the tile states (float32; empty unless save_states)."""
    y, states = _ext.selective_scan_fwd(*_f32(u, delta, A, B, C, D, delta_bias), delta_softplus, save_states)
    return y.to(u.dtype), states


@selective_scan_fwd_cuda.register_fake
def _(u, delta, A, B, C, D, delta_bias, delta_softplus, save_states):
    batch, KD, L = u.shape
    shape = (batch, KD, -(-L // TILE), A.shape[1]) if save_states else (0,)
    return torch.empty_like(u), u.new_empty(shape, dtype=torch.float32)


@torch.library.custom_op("mambaic::selective_scan_bwd_cuda", mutates_args=())
def selective_scan_bwd_cuda(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, delta_bias: torch.Tensor | None, delta_softplus: bool, dy: torch.Tensor,
    states: torch.Tensor,
) -> list[torch.Tensor]:
    """(du, ddelta, dA, dB, dC, dD, ddelta_bias), each in its input's dtype (dD and ddelta_bias float32
    zeros when D or delta_bias is None)."""
    grads = _ext.selective_scan_bwd(*_f32(u, delta, A, B, C, D, delta_bias), delta_softplus, *_f32(dy, states))
    like = (u, delta, A, B, C, D, delta_bias)
    return [g if t is None else g.to(t.dtype) for g, t in zip(grads, like)]


@selective_scan_bwd_cuda.register_fake
def _(u, delta, A, B, C, D, delta_bias, delta_softplus, dy, states):
    like = (u, delta, A, B, C, D, delta_bias)
    KD = u.shape[1]
    return [u.new_empty((KD,), dtype=torch.float32) if t is None else torch.empty_like(t) for t in like]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, delta_bias, delta_softplus, _ = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, output[1])
    ctx.delta_softplus = delta_softplus


def _backward(ctx, dy, _dstates):
    *inputs, states = ctx.saved_tensors
    if states.numel() == 0:  # the forward ran without saving them (no gradient was expected then)
        states = selective_scan_fwd_cuda(*inputs, ctx.delta_softplus, True)[1]
    grads = selective_scan_bwd_cuda(*inputs, ctx.delta_softplus, dy, states)
    return (*[None if t is None else g for g, t in zip(grads, inputs)], None, None)


torch.library.register_autograd("mambaic::selective_scan_fwd_cuda", _backward, setup_context=_setup_context)


def selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus):
    """The backend entry point registered with _backend (arguments already checked). The tile states
    are saved only when a gradient may be asked for."""
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (u, delta, A, B, C, D, delta_bias))
    return torch.ops.mambaic.selective_scan_fwd_cuda(u, delta, A, B, C, D, delta_bias, bool(delta_softplus), save)[0]


def supports(device: str, dtype: torch.dtype, d_state: int, **_) -> str | None:
    why = supports_device(device, dtype)
    if why is not None:
        return why
    if d_state > _MAX_N:
        return f"the cuda selective scan keeps at most {_MAX_N} states per channel, got d_state={d_state}"
    return None


_backend.register("selective_scan", "cuda", selective_scan, supports)
