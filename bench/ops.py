"""Per-op benchmark registry: the inputs of each op at its benchmark shape, and the minimum bytes
it must move (read every input once, write every output once), which bandwidth is counted on.

Shapes are the issue's targets (one H100): the selective scan of a 2048x1536 image's first
stage (KD = 4 * 512 channels, L = 768 * 768), the cross-scan of a 512-channel 576 x 1024 map,
and window attention on the 96 x 128 latent of a 2048x1536 image (128 channels, 8 heads of 16).
Value ranges follow the model: A = -exp(A_log) < 0, delta before softplus around zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

import mambaic_kernels as mk


@dataclass
class OpCase:
    name: str  # op and shape, e.g. "selective_scan B1-KD2048-L589824-N16"
    make: Callable[[], dict]  # builds the inputs (on the device)
    fwd: Callable[[dict], torch.Tensor]  # runs the public op on them
    fwd_bytes: int  # minimum bytes of the forward
    bwd_bytes: int  # minimum bytes of forward + backward
    length: int = 0  # sequence length L (selective_scan), to keep slow backends off the longest


def _size(dtype):
    return torch.finfo(dtype).bits // 8


def selective_scan_case(batch=1, KD=2048, L=589_824, N=16, K=4, dtype=torch.float32, device="cuda"):
    e = _size(dtype)

    def make():
        f = dict(device=device)
        return dict(
            u=torch.randn(batch, KD, L, dtype=dtype, **f),
            delta=(torch.randn(batch, KD, L, **f) * 0.5 - 2).to(dtype),
            A=-torch.exp(torch.randn(KD, N, **f) * 0.5),
            B=torch.randn(batch, K, N, L, dtype=dtype, **f),
            C=torch.randn(batch, K, N, L, dtype=dtype, **f),
            D=torch.randn(KD, **f),
            delta_bias=torch.randn(KD, **f) * 0.1,
        )

    def fwd(a):
        return mk.selective_scan(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"],
                                 delta_bias=a["delta_bias"], delta_softplus=True)

    seq, bc = batch * KD * L * e, batch * K * N * L * e
    fwd_bytes = 3 * seq + 2 * bc  # read u, delta, B, C; write y
    bwd_bytes = fwd_bytes + (3 * seq + 2 * bc) + (2 * seq + 2 * bc)  # + read u, delta, dy, B, C; write du, ddelta, dB, dC
    return OpCase(f"selective_scan B{batch}-KD{KD}-L{L}-N{N} {dtype}".replace("torch.", ""), make, fwd, fwd_bytes,
                  bwd_bytes, length=L)


def cross_scan_case(batch=1, C=512, H=576, W=1024, dtype=torch.float32, channel_last=False, device="cuda"):
    e = _size(dtype)
    shape = (batch, H, W, C) if channel_last else (batch, C, H, W)
    n = batch * C * H * W * e
    return OpCase(
        f"cross_scan {shape} {'channel_last ' if channel_last else ''}{dtype}".replace("torch.", ""),
        lambda: dict(x=torch.randn(shape, dtype=dtype, device=device)),
        lambda a: mk.cross_scan(a["x"], channel_last=channel_last),
        5 * n,  # read the map, write 4 sequences
        10 * n,  # + read 4 sequence gradients, write the map gradient
    )


def cross_merge_case(batch=1, C=512, H=576, W=1024, dtype=torch.float32, channel_last=False, device="cuda"):
    e = _size(dtype)
    n = batch * C * H * W * e
    return OpCase(
        f"cross_merge {(batch, 4, C, H, W)} {'to_channel_last ' if channel_last else ''}{dtype}".replace("torch.", ""),
        lambda: dict(y=torch.randn(batch, 4, C, H, W, dtype=dtype, device=device)),
        lambda a: mk.cross_merge(a["y"], channel_last=channel_last),
        5 * n,
        10 * n,
    )


def window_attention_case(batch=1, H=96, W=128, dim=128, heads=8, shifted=False, dtype=torch.float32, device="cuda"):
    e = _size(dtype)
    n = batch * H * W * dim * e

    def make():
        return dict(
            qkv=torch.randn(batch, H, W, 3 * dim, dtype=dtype, device=device),
            table=torch.randn(heads, 15, 15, dtype=dtype, device=device) * 0.02,
        )

    return OpCase(
        f"window_attention {(batch, H, W, 3 * dim)} h{heads} {'shifted' if shifted else 'plain'} {dtype}".replace("torch.", ""),
        make,
        lambda a: mk.window_attention(a["qkv"], a["table"], heads, 8, shifted=shifted),
        4 * n,  # read qkv (3 dim), write the output (dim)
        4 * n + 8 * n,  # + read qkv and dout, write dqkv
    )


def ss2d_core_case(batch=1, D=512, H=768, W=768, N=16, R=16, dtype=torch.float32, device="cuda"):
    """The SS2D core of the first stage of a 2048x1536 image's analysis (d_model 256 -> D = 512,
    R = 16). Minimum bytes: read u once and write the merged map once (the weights are small);
    backward: + read u and dout, write du (the weight gradients are small)."""
    e = _size(dtype)
    n = batch * D * H * W * e

    def make():
        f = dict(device=device)
        return dict(
            u=torch.randn(batch, D, H, W, dtype=dtype, **f),
            x_proj_weight=torch.randn(4, R + 2 * N, D, **f) / D**0.5,
            dt_projs_weight=torch.randn(4, D, R, **f) / R**0.5,
            dt_projs_bias=torch.randn(4, D, **f) * 0.5 - 4.0,
            A_logs=torch.log(torch.arange(1, N + 1, dtype=torch.float32, device=device)).repeat(4 * D, 1),
            Ds=torch.ones(4 * D, **f),
        )

    return OpCase(
        f"ss2d_core B{batch}-D{D}-H{H}-W{W}-N{N}-R{R} {dtype}".replace("torch.", ""),
        make,
        lambda a: mk.ss2d_core(**a),
        2 * n,
        2 * n + 3 * n,
        length=H * W,
    )


# The torch backend steps through L in Python (one op per step): at the target L one call takes
# seconds, so it is timed at a 16x shorter L, where its GB/s is the same to within launch noise.
SLOW_BACKENDS_MAX_L = {"torch": 36_864}


def all_cases(device="cuda"):
    return [
        selective_scan_case(device=device),
        selective_scan_case(L=36_864, device=device),
        cross_scan_case(device=device),
        cross_scan_case(channel_last=True, device=device),
        cross_merge_case(device=device),
        cross_merge_case(channel_last=True, device=device),
        window_attention_case(device=device),
        window_attention_case(shifted=True, device=device),
        ss2d_core_case(device=device),
        ss2d_core_case(H=192, W=192, device=device),
    ]
