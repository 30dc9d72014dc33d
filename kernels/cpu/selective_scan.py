"""`cpu` backend selective_scan: the C++ forward, with the `torch` backend's backward.

Forward is what CPU users run (decoding, evaluation); training on a CPU is rare, so backward
recomputes the chunk states with the PyTorch forward and runs the PyTorch adjoint scan.
fp16 / bf16 inputs are computed in float32 (as every backend does) and y is cast back.
Registered as ``mambaic::selective_scan_fwd_cpu`` (a torch.library custom op with a fake kernel
and autograd), so that torch.compile keeps it as one node of its graph.
"""

import torch

from ..pytorch.selective_scan import input_grads


def make_selective_scan(ext):
    @torch.library.custom_op("mambaic::selective_scan_fwd_cpu", mutates_args=())
    def selective_scan_fwd_cpu(
        u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
        D: torch.Tensor | None, delta_bias: torch.Tensor | None, delta_softplus: bool,
    ) -> torch.Tensor:
        f = torch.float32
        opt = [None if t is None else t.to(f).contiguous() for t in (D, delta_bias)]
        y = ext.selective_scan_fwd(*(t.to(f).contiguous() for t in (u, delta, A, B, C)), *opt, delta_softplus)
        return y.to(u.dtype)

    @selective_scan_fwd_cpu.register_fake
    def _(u, delta, A, B, C, D, delta_bias, delta_softplus):
        return torch.empty_like(u, memory_format=torch.contiguous_format)

    def setup_context(ctx, inputs, output):
        *tensors, delta_softplus = inputs
        ctx.save_for_backward(*tensors)
        ctx.delta_softplus = delta_softplus

    def backward(ctx, dy):
        return (*input_grads(dy, ctx.saved_tensors, ctx.delta_softplus), None)

    torch.library.register_autograd("mambaic::selective_scan_fwd_cpu", backward, setup_context=setup_context)

    def selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus):
        return selective_scan_fwd_cpu(u, delta, A, B, C, D, delta_bias, bool(delta_softplus))

    return selective_scan
