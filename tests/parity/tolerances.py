"""Every tolerance the parity suite uses, in one table: (op, dtype, "fwd"|"bwd") -> (rtol, atol).

Backends are compared with the float64 reference on the same inputs. The sizes were set from
the errors measured on the torch backend (CPU, 2026-11-25, the cases in the test files), then
widened 10x or more so that a different but correct summation order passes:

- float32 forward: cross_scan/merge are copies and at most 4-term sums (exact or 1 ulp);
  selective_scan sums N products per step over up to ~600 decayed steps, measured 2e-7 relative;
  window attention is a 64-term softmax-weighted sum, measured 1e-7. rtol 1e-5, atol 1e-5.
- float32 backward: gradients of A and delta_bias sum over batch * L * N terms (up to ~1e5),
  so their rounding grows with sqrt of that count: rtol 1e-4, atol 1e-4.
- float16 / bfloat16: inputs and outputs are rounded (eps 9.8e-4 / 7.8e-3) but state and
  accumulation stay in float32, so a backend's error is one or two output roundings. Beyond the
  table, `check_low_precision` applies flash-attention's rule: the backend's error against the
  float64 reference is at most 2x the error of the reference itself run in that precision.
"""

import torch

_FP32_FWD = (1e-5, 1e-5)
_FP32_BWD = (1e-4, 1e-4)
_FP16 = (5e-3, 5e-3)  # 5 ulp of fp16 at 1.0: output rounding plus input rounding of the scan
_BF16 = (4e-2, 4e-2)  # 5 ulp of bf16 at 1.0

TOLERANCES = {
    (op, dtype, direction): tol
    for op in ("cross_scan", "cross_merge", "selective_scan", "window_attention")
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

# How many times the reference's own low-precision error a backend may reach (flash-attention's rule).
LOW_PRECISION_FACTOR = 2.0


def tolerance(op: str, dtype: torch.dtype, direction: str) -> tuple[float, float]:
    return TOLERANCES[(op, dtype, direction)]
