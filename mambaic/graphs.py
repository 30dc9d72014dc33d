"""The model's forward replayed from CUDA graphs: one capture per input shape, cached.

Small images are host-bound: a 768x512 forward launches thousands of kernels (the slice loop and
the attention modules at 1/16 of the image), and Python takes longer to launch them than the GPU to
run them. A CUDA graph records the launches once and replays them with one call.

    graphed = mambaic.CUDAGraphForward(model)
    out = graphed(x)          # the first call per shape warms up and captures; later ones replay

The captured forward is the eval-mode, no-autograd forward that ``model(x)`` runs at capture time:
its backends (``MAMBAIC_BACKEND``, ``use_backend``) and precision are part of the cache key, and
the outputs are copies, so a later call never overwrites them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mambaic_kernels import _backend


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    x: torch.Tensor  # the graph's input buffer
    out: dict  # the graph's output buffers


def _clone(tree):
    if isinstance(tree, torch.Tensor):
        return tree.clone()
    if isinstance(tree, dict):
        return {k: _clone(v) for k, v in tree.items()}
    return tree


class CUDAGraphForward:
    """``model(x)`` under ``torch.no_grad`` in eval mode, replayed from a CUDA graph per input
    shape. The outputs equal the eager forward's bit for bit (same kernels, same order)."""

    def __init__(self, model: torch.nn.Module, warmup: int = 2):
        self.model, self.warmup = model, warmup
        self._captured: dict[tuple, _Captured] = {}

    def _key(self, x: torch.Tensor) -> tuple:
        backends = tuple(_backend.requested(op)[0] for op in _backend.OPS)
        return tuple(x.shape), x.dtype, x.device, getattr(self.model, "precision", None), backends

    def __call__(self, x: torch.Tensor) -> dict:
        if x.device.type != "cuda":
            raise ValueError(f"CUDAGraphForward: x must be a CUDA tensor, got a {x.device.type} tensor")
        if self.model.training:
            raise ValueError("CUDAGraphForward: the model must be in eval mode (model.eval()): a graph replays "
                             "one forward, without autograd or training noise")
        key = self._key(x)
        captured = self._captured.get(key)
        if captured is None:
            captured = self._captured[key] = self._capture(x)
        captured.x.copy_(x)
        captured.graph.replay()
        return _clone(captured.out)

    def _capture(self, x: torch.Tensor) -> _Captured:
        static_x = x.clone()
        # warm-up on a side stream, as PyTorch requires before a capture: kernels compile, Triton
        # autotunes and cuDNN picks its algorithms outside the graph
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(self.warmup):
                self.model(static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            out = self.model(static_x)
        return _Captured(graph, static_x, out)

    def clear(self) -> None:
        """Drop every captured graph (and the memory its buffers hold)."""
        self._captured.clear()
