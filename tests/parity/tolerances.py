"""Every tolerance the parity suite uses, in one table: (op, dtype, "fwd"|"bwd") -> (rtol, atol).

Backends are compared with the float64 reference on the same (already rounded) inputs.
Measured on 2026-11-25 (CPU, torch and cpu backends; error relative to the largest output):
selective_scan (L=300, N=16) 1.4e-7 fp32, 3.1e-4 fp16, 2.0e-3 bf16; window_attention 3.7e-7
fp32, 2.8e-4 fp16, 2.1e-3 bf16; cross_scan/merge are copies and 4-term sums (exact or 1 ulp).
The table is about 10-20x wider than those numbers, so that a correct kernel with another
summation order passes and a wrong index or a dropped term (errors of order 1) does not:

- float32 forward: rtol 1e-5, atol 1e-5 (a scan sums N products per step over hundreds of
  decayed steps; attention sums 64 softmax-weighted terms).
- float32 backward: rtol 1e-4, atol 1e-4, relative to the largest gradient of each input
  (helpers.assert_close): dA and ddelta_bias sum over batch * L * N terms, drel_pos_bias over
  every window and batch, so their rounding grows with the square root of those counts.
- float16 / bfloat16: 5 ulp at 1.0 (5e-3 / 4e-2): inputs and outputs are rounded but the state
  and the accumulation stay float32, so a backend's error is one or two output roundings. Beyond
  the table, `check_low_precision` applies flash-attention's rule: the backend's error against
  the float64 reference is at most 2x the error of the reference itself run in that precision.
"""

import torch

_FP32_FWD = (1e-5, 1e-5)
_FP32_BWD = (1e-4, 1e-4)
_FP16 = (5e-3, 5e-3)  # 5 ulp of fp16 at 1.0: output rounding plus input rounding of the scan
_BF16 = (4e-2, 4e-2)  # 5 ulp of bf16 at 1.0

TOLERANCES = {
    (op, dtype, direction): tol
    for op in ("cross_scan", "cross_merge", "selective_scan", "window_attention", "ss2d_core")
    for dtype, direction, tol in (
        (torch.float64, "fwd", (1e-10, 1e-10)),
        (torch.float64, "bwd", (1e-9, 1e-9)),
        (torch.float32, "fwd", _FP32_FWD),
        (torch.float32, "bwd", _FP32_BWD),
        (torch.float16, "fwd", _FP16),
        (torch.float16, "bwd", _FP16),
        (torch.bfloat16, "fwd", _BF16),
        (torch.bfloat16, "bwd", _BF16),
    )
}

# Ops whose forward output is compared relative to its largest element, as gradients are.
# ss2d_core sums four directions whose terms are each up to ~100x the sum where they cancel; in
# float16 / bfloat16 each term inherits the rounding of its projections (x_proj and dt_proj run in
# the input dtype), so at the cancelling positions an elementwise relative check measures the
# cancellation, not the backend. Measured on an H200 (2026-11-29, (2, 40, 23, 59), N=16, R=5):
# torch and triton both off by 0.128 at an output of -185 in float16 (one ulp there), 1.19 at -58
# in bfloat16, the same elements for both backends.
SCALED_FORWARD = ("ss2d_core",)

# How many times the reference's own low-precision error a backend may reach (flash-attention's rule).
LOW_PRECISION_FACTOR = 2.0


def tolerance(op: str, dtype: torch.dtype, direction: str) -> tuple[float, float]:
    return TOLERANCES[(op, dtype, direction)]
