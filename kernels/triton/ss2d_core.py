"""`triton` backend of ss2d_core: the composition of this backend's cross_scan, selective_scan and
cross_merge kernels, with cuBLAS for the two projections (what SS2D ran before ss2d_core existed,
bit for bit, so files encoded before still decode).

The four directions are stacked in every intermediate ((batch, 4, dim, L) each). Running them one
at a time over the same scan kernel (``kernels/pytorch/ss2d_core.py``) halves the peak memory of a
2048x1536 forward on an H200 (27.4 -> 14.7 GiB) but costs 43% more time (718 -> 1026 ms: the
flips, transposes and accumulations of the per-direction maps move more bytes than the stacked
kernels do; bench/RESULTS.md), so the GPU keeps the stacked form until one fused kernel reads each
direction by index and accumulates the output itself.
"""

from __future__ import annotations

import torch

from .. import _backend
from ..reference.ss2d_core import compose
from . import cross_scan as _cross
from . import selective_scan as _scan


def ss2d_core(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds):
    return compose(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, cross_scan=_cross.cross_scan,
                   selective_scan=_scan.selective_scan, cross_merge=_cross.cross_merge)  # fmt: skip


def _supports(device: str, dtype: torch.dtype, d_state: int, **meta) -> str | None:
    return _scan._supports(device, dtype, d_state)


_backend.register("ss2d_core", "triton", ss2d_core, _supports)
