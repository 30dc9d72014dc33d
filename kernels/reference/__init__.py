"""Ground truth for every op: obvious before fast, computed in float32 (float64 when given float64).

Everything we publish is measured against these functions; users never run them (the ``torch``
backend in ``mambaic_kernels.pytorch`` is the fast PyTorch version).
"""

from .cross_scan import cross_merge, cross_scan
from .selective_scan import selective_scan
from .ss2d_core import ss2d_core
from .window_attention import window_attention

__all__ = ["cross_scan", "cross_merge", "selective_scan", "ss2d_core", "window_attention"]
