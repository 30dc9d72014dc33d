"""`triton` backend of ss2d_core: the four directions one at a time over the Triton selective scan.

Each direction's sequence, delta projection and scan output is a (batch, dim, L) map that lives
only while that direction runs (see ``kernels/pytorch/ss2d_core.py``): no (batch, 4, dim, L)
tensor. The projections are cuBLAS matmuls, the scans this backend's selective_scan kernel.
"""

from __future__ import annotations

import torch

from .. import _backend
from ..pytorch.ss2d_core import make_ss2d_core
from . import selective_scan as _scan

ss2d_core = make_ss2d_core(_scan.selective_scan)


def _supports(device: str, dtype: torch.dtype, d_state: int, **meta) -> str | None:
    return _scan._supports(device, dtype, d_state)


_backend.register("ss2d_core", "triton", ss2d_core, _supports)
