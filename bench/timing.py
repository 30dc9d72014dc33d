"""GPU timing shared by the benchmarks: CUDA events around each run, warm-up first (autotuning,
compilation), inputs built outside the timed region, p20 / p50 / p80 of many runs; peak memory
from torch.cuda.max_memory_allocated after a reset. The device's copy bandwidth, measured the same
way, is the ceiling every GB/s figure is compared with."""

from __future__ import annotations

import os
import statistics
import subprocess
from pathlib import Path

import torch


def cuda_event_times(fn, warmup: int = 5, iters: int = 50, budget_s: float = 5.0) -> list[float]:
    """Milliseconds of ``fn()`` per run, by CUDA events; fewer runs if one takes long (budget_s)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
        if sum(times) > budget_s * 1e3 and len(times) >= 3:
            break
    return times


def cuda_graph_times(fn, iters: int = 20, budget_s: float = 2.0) -> list[float] | None:
    """Milliseconds per replay of ``fn`` captured in a CUDA graph: GPU time without launch cost.

    None when ``fn`` can't be captured (host syncs, allocations the graph pool can't serve).
    """
    from mambaic.graphs import capture

    try:
        graph, _ = capture(fn, warmup=1)
    except RuntimeError:
        return None
    return cuda_event_times(graph.replay, warmup=2, iters=iters, budget_s=budget_s)


def kernel_ms(fn, iters: int = 5) -> float:
    """Milliseconds of GPU kernels per ``fn()`` call, summed from torch.profiler's device events:
    GPU time without the host's launch gaps, for calls that a CUDA graph cannot capture (a
    backward pass). ``fn`` should be warm."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    return sum(e.self_device_time_total for e in prof.key_averages()) / iters / 1e3


def quantiles(times: list[float]) -> dict:
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return {"p20_ms": q[1], "p50_ms": statistics.median(times), "p80_ms": q[7], "runs": len(times)}


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy rate in GB/s, counting bytes read plus bytes written."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    t = statistics.median(cuda_event_times(lambda: dst.copy_(src), warmup=3, iters=20))
    return 2 * nbytes / (t * 1e-3) / 1e9


def machine() -> dict:
    import triton

    return {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "commit": git_commit(),
    }


def git_commit(root: Path | None = None) -> str:
    """The commit the results come from: $MAMBAIC_COMMIT when set (a copy of the tree whose .git is
    stale or absent, as on a remote benchmark machine), else HEAD, marked "+modified" when tracked
    files differ from it, so a figure is never credited to a commit that did not produce it."""
    if os.environ.get("MAMBAIC_COMMIT"):
        return os.environ["MAMBAIC_COMMIT"]
    try:
        git = dict(capture_output=True, text=True, cwd=root or Path(__file__).parent, timeout=10)
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **git).stdout.strip()
        if not head:
            return "unknown"
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **git).stdout.strip()
        return head + ("+modified" if changed else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
