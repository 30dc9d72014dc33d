"""selective_scan: the Mamba S6 recurrence with VMamba's grouping of B and C over K scan directions."""

from __future__ import annotations

import torch

from . import _backend, _checks


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    *,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Run the selective scan over L for every channel, from a zero state.

    With G = KD / K channels per group and channel d in group k = d // G::

        dt      = softplus(delta + delta_bias) if delta_softplus else delta + delta_bias
        h_t[n]  = exp(dt_t * A[d, n]) * h_{t-1}[n] + dt_t * B[k, n, t] * u_t
        y_t     = sum_n C[k, n, t] * h_t[n] + D[d] * u_t

    Args:
        u, delta: (batch, KD, L), float32 / float16 / bfloat16, same dtype.
        A: (KD, N), usually negative (``-exp(A_log)``); any float dtype, used in float32.
        B, C: (batch, K, N, L), u's dtype; K must divide KD.
        D: optional (KD,) skip weight. delta_bias: optional (KD,). Both used in float32.
        delta_softplus: apply softplus (threshold 20, as mamba) to ``delta + delta_bias``.

    Returns:
        y (batch, KD, L) in u's dtype. The state and y are accumulated in float32 whatever the
        input dtype; all tensors contiguous and on one device.

    Example:
        >>> u = torch.randn(2, 8, 10); delta = torch.rand(2, 8, 10)
        >>> A = -torch.rand(8, 4); B = torch.randn(2, 4, 4, 10); C = torch.randn(2, 4, 4, 10)
        >>> selective_scan(u, delta, A, B, C, delta_softplus=True).shape
        torch.Size([2, 8, 10])
    """
    op = "selective_scan"
    _checks.tensor(op, "u", u, ndim=3)
    batch, KD, L = u.shape
    if KD < 1:
        raise ValueError(f"{op}: u must have at least one channel (dim 1), got shape {tuple(u.shape)}")
    _checks.tensor(op, "delta", delta)
    _checks.shape(op, "delta", delta, (batch, KD, L), "the shape of u")
    _checks.tensor(op, "A", A, ndim=2)
    if A.shape[0] != KD:
        raise ValueError(f"{op}: A must have shape (KD, N) = ({KD}, N) to match u, got {tuple(A.shape)}")
    N = A.shape[1]
    _checks.tensor(op, "B", B, ndim=4)
    K = B.shape[1]
    if K < 1 or KD % K != 0:
        raise ValueError(f"{op}: B's group count K = B.shape[1] must divide KD = {KD}, got B shape {tuple(B.shape)}")
    _checks.shape(op, "B", B, (batch, K, N, L), "(batch, K, N, L)")
    _checks.tensor(op, "C", C)
    _checks.shape(op, "C", C, (batch, K, N, L), "the shape of B")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            _checks.tensor(op, name, t)
            _checks.shape(op, name, t, (KD,), "(KD,)")
    _checks.same_dtype(op, "u", u, delta=delta, B=B, C=C)
    _checks.same_device(op, "u", u, delta=delta, A=A, B=B, C=C, D=D, delta_bias=delta_bias)
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            _checks.contiguous(op, name, t)
    fn = _backend.resolve(op, **_checks.meta(u, d_state=N))
    return fn(u, delta, A, B, C, D, delta_bias, bool(delta_softplus))
