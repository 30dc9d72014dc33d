"""The `torch` backend: vectorised PyTorch for every op, on any device and float dtype."""

from .. import _backend
from .cross_scan import cross_merge, cross_scan
from .selective_scan import selective_scan
from .ss2d_core import make_ss2d_core
from .window_attention import window_attention

ss2d_core = make_ss2d_core(selective_scan)


def _supports(**meta):
    return None  # plain PyTorch runs wherever the tensors are


for _op, _fn in (
    ("cross_scan", cross_scan),
    ("cross_merge", cross_merge),
    ("selective_scan", selective_scan),
    ("window_attention", window_attention),
    ("ss2d_core", ss2d_core),
):
    _backend.register(_op, "torch", _fn, _supports)
