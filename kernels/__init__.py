"""mambaic_kernels: the hot operators of MambaIC, each with a PyTorch reference and fast backends.

Public ops (dimension letters used throughout):
  batch  images in a batch           dim  channels
  H, W   map height and width         L    H*W, the sequence length of a scan
  K      scan directions (4)          N    d_state, the SSM state size

  cross_scan(x)              (batch, dim, H, W) -> (batch, 4, dim, L)
  cross_merge(y)             (batch, 4, dim, H, W) -> (batch, dim, L)
  selective_scan(u, delta, A, B, C, D, delta_bias=, delta_softplus=)
  window_attention(qkv, rel_pos_bias, heads, window, shifted=)
  ss2d_core(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)
                             (batch, dim, H, W) -> (batch, H, W, dim): the four scans of SS2D, merged

The backend is chosen per call by ``MAMBAIC_BACKEND=torch|triton|cuda|auto`` or
:func:`use_backend`; ``mambaic_kernels.reference`` holds the ground truth.
"""

from . import reference
from ._backend import BACKENDS, BackendUnavailableError, available_backends, backend_report, use_backend
from .cross_scan import cross_merge, cross_scan
from .selective_scan import selective_scan
from .ss2d_core import ss2d_core
from .window_attention import window_attention

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "available_backends",
    "backend_report",
    "cross_merge",
    "cross_scan",
    "reference",
    "selective_scan",
    "ss2d_core",
    "use_backend",
    "window_attention",
]
