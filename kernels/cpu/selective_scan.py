"""`cpu` backend selective_scan: the C++ forward, with the `torch` backend's backward.

Forward is what CPU users run (decoding, evaluation); training on a CPU is rare, so backward
recomputes the chunk states with the PyTorch forward and runs the PyTorch adjoint scan.
fp16 / bf16 inputs are computed in float32 (as every backend does) and y is cast back.
"""

import torch

from ..pytorch.selective_scan import input_grads


def make_selective_scan(ext):
    def forward_fp32(u, delta, A, B, C, D, delta_bias, delta_softplus):
        f = torch.float32
        opt = [None if t is None else t.to(f).contiguous() for t in (D, delta_bias)]
        return ext.selective_scan_fwd(u.to(f), delta.to(f), A.to(f).contiguous(), B.to(f), C.to(f), *opt,
                                      delta_softplus)

    class _SelectiveScan(torch.autograd.Function):
        @staticmethod
        def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus):
            ctx.save_for_backward(u, delta, A, B, C, D, delta_bias)
            ctx.delta_softplus = delta_softplus
            return forward_fp32(u, delta, A, B, C, D, delta_bias, delta_softplus).to(u.dtype)

        @staticmethod
        def backward(ctx, dy):
            return (*input_grads(dy, ctx.saved_tensors, ctx.delta_softplus), None)

    def selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus):
        inputs = (u, delta, A, B, C, D, delta_bias)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
            return _SelectiveScan.apply(*inputs, delta_softplus)
        return forward_fp32(*inputs, delta_softplus).to(u.dtype)

    return selective_scan
