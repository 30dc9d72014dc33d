"""CUDA graphs for the model: the forward, and the network parts of compress / decompress.

Small images are host-bound: a 768x512 forward launches thousands of kernels (the slice loop and
the attention modules at 1/16 of the image), and Python takes longer to launch them than the GPU to
run them. A CUDA graph records the launches once and replays them with one call.

    graphed = mambaic.CUDAGraphForward(model)
    out = graphed(x)          # the first call per shape warms up and captures; later ones replay

    model.use_cuda_graphs()   # compress / decompress replay their network parts (see below)

compress and decompress cannot be one graph: the entropy coder runs on the host between the parts
(the decoder must read the anchors' symbols before it can compute the non-anchors' means). Each
part between two coder calls (the transforms, the hyper-synthesis, each slice's anchor and
non-anchor parameters and its residual prediction) is captured on its first call per input shape
and replayed after. Replays run the kernels that eager mode runs, in the same order, so the
decoder gets the encoder's means bit for bit whether either side replays or not (under cuDNN's
deterministic algorithms, which the codec sets).

What a capture depends on is its cache key: the part, its inputs' shapes, dtypes and device, the
backend each op dispatches to, the model's precision and cuDNN's mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from mambaic_kernels import _backend


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: tuple  # the graph's input buffers
    outputs: object  # the graph's output buffers (a tensor, a tuple of tensors, or a dict of them)


def _clone(tree):
    if isinstance(tree, torch.Tensor):
        return tree.clone()
    if isinstance(tree, dict):
        return {k: _clone(v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(_clone(v) for v in tree)
    return tree


def capture(fn: Callable, warmup: int, pool=None, before: Callable | None = None):
    """``fn()`` captured in a new CUDA graph: ``(graph, what the captured call returned)``.

    ``fn`` first runs ``warmup`` times on a side stream, as torch.cuda.graphs advises: kernels
    compile and autotune, the caching allocator fills, cuDNN makes its choices, all outside the
    graph. ``before()`` runs before each of those calls and before the capture (the training step
    clears the gradients there). ``pool`` shares one memory pool between graphs.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            if before is not None:
                before()
            fn()
    torch.cuda.current_stream().wait_stream(side)
    if before is not None:
        before()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph, out


def dispatch_key(model: torch.nn.Module) -> tuple:
    """What else a capture depends on besides its inputs: each op's requested backend, the
    model's precision and cuDNN's mode."""
    backends = tuple(_backend.requested(op)[0] for op in _backend.OPS)
    return backends, getattr(model, "precision", None), torch.backends.cudnn.deterministic


class GraphCache:
    """Captured CUDA graphs of functions of tensors, one per (name, input shapes, key).

    ``run(name, fn, *tensors)`` returns ``fn(*tensors)``: on the first call for a key it warms
    ``fn`` up (compilation, autotuning, cuDNN's choices happen outside the graph), captures it and
    replays; later calls copy the inputs into the graph's buffers, replay and return copies of
    its outputs.

    All graphs of one cache share one memory pool, so that a capture costs the memory of its
    largest part, not the sum. That is safe in any order of calls because nothing outside a graph
    ever references its pool: inputs are copied in, outputs copied out (latent-sized maps, a
    small price next to the launches a replay saves).
    """

    def __init__(self, warmup: int = 2):
        self.warmup = warmup
        self._captured: dict[tuple, _Captured] = {}
        self._pool = None

    def __len__(self) -> int:
        return len(self._captured)

    def run(self, name: str, fn: Callable, *tensors: torch.Tensor, key: tuple = ()):
        full_key = (name, *((t.shape, t.dtype, t.device) for t in tensors), key)
        captured = self._captured.get(full_key)
        if captured is None:
            captured = self._captured[full_key] = self._capture(fn, tensors)
        for buffer, t in zip(captured.inputs, tensors):
            buffer.copy_(t)
        captured.graph.replay()
        return _clone(captured.outputs)

    def _capture(self, fn: Callable, tensors: tuple) -> _Captured:
        inputs = tuple(t.clone() for t in tensors)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.no_grad():
            graph, outputs = capture(lambda: fn(*inputs), self.warmup, pool=self._pool)
        return _Captured(graph, inputs, outputs)

    def clear(self) -> None:
        """Drop every captured graph (and the memory its buffers hold)."""
        self._captured.clear()
        self._pool = None


class CUDAGraphForward:
    """``model(x)`` under ``torch.no_grad`` in eval mode, replayed from a CUDA graph per input
    shape. The outputs equal the eager forward's bit for bit (same kernels, same order) and are
    copies, so a later call never overwrites them."""

    def __init__(self, model: torch.nn.Module, warmup: int = 2):
        self.model = model
        self._cache = GraphCache(warmup)

    @property
    def _captured(self) -> dict:
        return self._cache._captured

    def __call__(self, x: torch.Tensor) -> dict:
        if x.device.type != "cuda":
            raise ValueError(f"CUDAGraphForward: x must be a CUDA tensor, got a {x.device.type} tensor")
        if self.model.training:
            raise ValueError("CUDAGraphForward: the model must be in eval mode (model.eval()): a graph replays "
                             "one forward, without autograd or training noise")
        return self._cache.run("forward", self.model, x, key=dispatch_key(self.model))

    def clear(self) -> None:
        """Drop every captured graph (and the memory its buffers hold)."""
        self._cache.clear()
