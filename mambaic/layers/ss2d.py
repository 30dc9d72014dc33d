"""SS2D: VMamba's 2D selective-scan mixer, as configured by MambaIC (VMamba forward type "v2").

Dataflow for an input map ``x`` (batch, H, W, d_model), with d_inner = ssm_ratio * d_model::

    x ── in_proj ──┬── u ── depthwise 3x3 conv ── SiLU ── core ── out_norm ──(*)── out_proj ── out
                   └── z ── SiLU ─────────────────────────────────────────────┘
    (in_proj is one (2 d_inner, d_model) weight, applied as two matmuls: u channel-first, z channel-last)

    core:  the ss2d_core op: for each of the 4 scan directions of u,
           x_proj -> delta_r, B, C (rank R, N, N channels); dt_proj -> delta (d_inner channels);
           selective_scan(u, delta, A=-exp(A_logs), B, C, D=Ds, delta_bias, softplus);
           the 4 outputs summed back onto the map, (batch, H, W, d_inner)

The core is one ``mambaic_kernels`` op, so ``MAMBAIC_BACKEND`` chooses who runs it.
Parameter names and shapes are those of the official checkpoints (``in_proj``, ``conv2d``,
``x_proj_weight``, ``dt_projs_weight``, ``dt_projs_bias``, ``A_logs``, ``Ds``, ``out_norm``,
``out_proj``). The official v2 path casts the scan inputs to float32 ("force_fp32"); our scan
inputs are float32 here too (a no-op for a float32 model); the result is cast back to the model's
dtype before out_norm, so a half-precision model runs without autocast.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import mambaic_kernels as mk
from mambaic_kernels._context import ContextSetting
from mambaic_kernels.reference.ss2d_core import compose

from .ss2d_autograd import conv_silu, core_recomputes_input, gated_output, recomputed_when_saved

# Set by legacy_core(): SS2D cores run the public cross_scan, selective_scan and cross_merge ops
# in sequence, as mambaic 0.1 did, whose arithmetic version 1 .mic files were encoded with.
_LEGACY_CORE = ContextSetting("mambaic_legacy_core", False)


def legacy_core():
    """Run every SS2D core as mambaic 0.1 did (the public cross_scan, selective_scan and
    cross_merge ops, the four directions stacked): the arithmetic of version 1 .mic files, which
    carry no checksums. The ss2d_core op does not give those bits: torch runs one direction at a
    time since 0.2, triton and cpu one fused scan per direction since 0.3."""
    return _LEGACY_CORE.set(True)


def _public_cross_scan(x, channel_last):
    return mk.cross_scan(x, channel_last=channel_last)


def _public_selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus):
    return mk.selective_scan(u, delta, A, B, C, D, delta_bias=delta_bias, delta_softplus=delta_softplus)


def _public_cross_merge(y, channel_last):
    return mk.cross_merge(y, channel_last=channel_last)

K_DIRECTIONS = 4  # the four scan orders of cross_scan


class SS2D(nn.Module):
    """The selective-scan 2D mixer of a VSS block.

    Args:
        d_model: channels of the input and output.
        d_state: N, the SSM state size per channel.
        ssm_ratio: d_inner / d_model.
        dt_rank: R, the rank of the delta projection; "auto" is ceil(d_model / 16).
        d_conv: side of the depthwise convolution before the scan.
        dt_min, dt_max, dt_init_floor: range of the initial step sizes (Mamba's initialisation).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
    ):
        super().__init__()
        d_inner = int(ssm_ratio * d_model)
        dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.d_inner, self.d_state, self.dt_rank = d_inner, d_state, dt_rank
        K = K_DIRECTIONS

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)  # -> (u | z)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=True)

        # x_proj: per direction, d_inner -> (delta rank R | B: N | C: N), as K stacked Linear weights.
        x_proj = torch.empty(K, dt_rank + 2 * d_state, d_inner)
        for k in range(K):
            nn.init.kaiming_uniform_(x_proj[k], a=math.sqrt(5))  # nn.Linear's default initialisation
        self.x_proj_weight = nn.Parameter(x_proj)

        # dt_proj: per direction, R -> d_inner. Weights uniform in +-R^-0.5; the bias is the inverse
        # softplus of step sizes drawn log-uniformly in [dt_min, dt_max], so softplus(bias) = dt.
        bound = dt_rank**-0.5
        self.dt_projs_weight = nn.Parameter(torch.empty(K, d_inner, dt_rank).uniform_(-bound, bound))
        dt = torch.exp(torch.rand(K, d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))

        # S4D-real initialisation: A[d, n] = -(n + 1), stored as log; D (skip) = 1.
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(K * d_inner, 1)
        self.A_logs = nn.Parameter(torch.log(A))  # (K * d_inner, N)
        self.Ds = nn.Parameter(torch.ones(K * d_inner))

        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, x: torch.Tensor, norm: nn.Module | None = None) -> torch.Tensor:
        """(batch, H, W, d_model) -> (batch, H, W, d_model).

        ``norm``: SS2D's input is ``norm(x)``, computed here rather than by the caller. Without
        autograd it is then computed twice, for u before the core and for z after it, so that the
        normalised map is not held while the core runs (its peak, 0.75 GiB less at 2048x1536); the
        two evaluations give the same bits."""
        h = x if norm is None else norm(x)
        batch, H, W, C = h.shape
        inplace = not torch.is_grad_enabled()
        # training without autocast: the same calls as functions that keep fewer maps (ss2d_autograd.py)
        lean = not inplace and not torch.is_autocast_enabled(h.device.type)
        # training: h = norm(x) is not kept for the backward (x is, by the norm): the u matmul (as
        # its rows view) and the tail get it computed again
        rebuild_h = lean and norm is not None
        with (recomputed_when_saved((h, lambda: norm(x)), (self._rows(h), lambda: self._rows(norm(x))))
              if rebuild_h else contextlib.nullcontext()):
            w_u, w_z = self.in_proj.weight.chunk(2, dim=0)  # in_proj has no bias (official)
            # The u half goes to the channel-first conv and scan: computing it as W_u @ x^T gives that
            # layout straight from the matmul, instead of a channel-last result plus a transposing
            # copy (about 10% of a VSS block on CPU at 1/2 resolution).
            u = torch.bmm(w_u.expand(batch, -1, -1), self._rows(h)).view(batch, self.d_inner, H, W)
            # Without autograd nothing needs the intermediates: activations run in place and z is made
            # after the core, so that the core's peak holds u and its own buffers, not z as well.
            renorm = inplace and norm is not None
            if renorm:
                del h  # recomputed for z below
            if lean:
                u0, u = u, conv_silu(u, self.conv2d)  # keeps the conv's input only
                with core_recomputes_input(u0, u, self.conv2d):  # and the core does not keep u
                    y = self.scan(u)
                del u0
            else:
                u = F.silu(self.conv2d(u), inplace=inplace)  # (batch, d_inner, H, W)
                y = self.scan(u)  # (batch, H, W, d_inner)
            del u
            if not lean:  # before z exists: without autograd, the peak holds one map less
                y = self.out_norm(y)
            if lean:
                return gated_output(y, h, w_z, self.out_norm, self.out_proj)  # keeps y and h (kept for u anyway)
            if renorm:
                h = norm(x)
            zp = F.linear(h, w_z)  # (batch, H, W, d_inner)
            z = F.silu(zp, inplace=inplace)
            return self.out_proj(y.mul_(z) if inplace else y * z)

    @staticmethod
    def _rows(h: torch.Tensor) -> torch.Tensor:
        """h (batch, H, W, C) as the u matmul takes it: (batch, C, L), a view."""
        batch, H, W, C = h.shape
        return h.reshape(batch, H * W, C).transpose(1, 2)

    def core(self, u: torch.Tensor) -> torch.Tensor:
        """The 2D selective scan: (batch, d_inner, H, W) -> out_norm'ed (batch, H, W, d_inner)."""
        return self.out_norm(self.scan(u))

    def scan(self, u: torch.Tensor) -> torch.Tensor:
        """The 2D selective scan: (batch, d_inner, H, W) -> (batch, H, W, d_inner), before out_norm."""
        args = (u.contiguous(), self.x_proj_weight, self.dt_projs_weight, self.dt_projs_bias, self.A_logs, self.Ds)
        if _LEGACY_CORE.get():
            y = compose(*args, cross_scan=_public_cross_scan, selective_scan=_public_selective_scan,
                        cross_merge=_public_cross_merge)  # fmt: skip
        else:
            y = mk.ss2d_core(*args)
        return y
