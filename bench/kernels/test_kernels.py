"""Time each op's forward and forward+backward per backend at its benchmark shape (bench/ops.py)."""

import statistics

import pytest
import torch

from bench import ops
from bench.timing import cuda_event_times, cuda_graph_times, kernel_ms, quantiles
from mambaic_kernels import _backend

CASES = ops.all_cases() if torch.cuda.is_available() else []
BACKENDS = ["torch", "triton", "cuda", "vmamba"]


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_kernel(benchmark, copy_gbs, record, case, backend, mode):
    op = case.name.split()[0]
    reason = _backend.why_unavailable_typically(op, backend, "cuda")
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")
    max_l = ops.SLOW_BACKENDS_MAX_L.get(backend)
    if op in ("selective_scan", "ss2d_core") and max_l is not None and case.length > max_l:
        pytest.skip(f"{backend}: too slow at L={case.length}; timed at L={max_l}")
    inputs = case.make()
    if mode == "fwdbwd":
        for t in inputs.values():
            if t.is_floating_point():
                t.requires_grad_(True)
        dout = torch.randn_like(case.fwd(inputs))

        def run():
            out = case.fwd(inputs)
            grads = [t for t in inputs.values() if t.requires_grad]
            torch.autograd.grad(out, grads, dout)
    else:
        def run():
            with torch.no_grad():
                case.fwd(inputs)

    with _backend.use_backend(backend):
        torch.cuda.reset_peak_memory_stats()
        times = cuda_event_times(run, warmup=3, iters=20, budget_s=1.5)
        peak = torch.cuda.max_memory_allocated() / 2**20
        kernels_ms = kernel_ms(run, iters=3 if statistics.median(times) > 50 else 10)
        graph_ms = deterministic = None
        if mode == "fwd" and statistics.median(times) < 50:  # longer calls: launch cost is noise
            graph = cuda_graph_times(run, iters=20, budget_s=1.0)
            graph_ms = statistics.median(graph) if graph else None
            with torch.no_grad():
                deterministic = bool(torch.equal(case.fwd(inputs), case.fwd(inputs)))

        def synced():
            run()
            torch.cuda.synchronize()

        rounds = max(3, min(20, int(500 / max(statistics.median(times), 1e-3))))
        benchmark.pedantic(synced, rounds=rounds, warmup_rounds=1)
    q = quantiles(times)
    nbytes = case.fwd_bytes if mode == "fwd" else case.bwd_bytes
    gpu_ms = graph_ms if graph_ms is not None else q["p50_ms"]  # GPU time: graph replay when capturable
    gbs = nbytes / (gpu_ms * 1e-3) / 1e9
    wall_ms = benchmark.stats.stats.median * 1e3
    extra = dict(gbs=gbs, copy_gbs=copy_gbs, min_bytes=nbytes, peak_mib=peak, graph_ms=graph_ms, kernel_ms=kernels_ms,
                 deterministic=deterministic)
    benchmark.extra_info.update(q, **extra)
    record(dict(op=case.name, backend=backend, mode=mode, shape=case.name, dtype="float32", **q, wall_ms=wall_ms,
                **extra))
