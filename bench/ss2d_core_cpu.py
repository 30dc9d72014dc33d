"""CPU forward of the whole model with the `cpu` backend: the fused SS2D core against the stacked one.

    python bench/ss2d_core_cpu.py --core fused --res 768x512
    python bench/ss2d_core_cpu.py --core stacked --res 768x512       # mambaic 0.1 / 0.2's form
    python bench/ss2d_core_cpu.py --core fused --res 2048x1536 --iters 0   # peak memory of one forward

`stacked` runs every SS2D core as the composition of the public cross_scan, selective_scan and
cross_merge ops (`mambaic.layers.ss2d.legacy_core`: what the `cpu` backend ran before 0.3). Random
weights (seed 0), official configuration, batch 1, under torch.no_grad. One forward warms up (its
time is printed), then --iters timed forwards (wall clock, median); peak memory is the process's
VmHWM, reset after the warm-up when --iters > 0 (then it shows the steady state), otherwise
counted from the start (model and input included, printed apart). Run one core per process.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` importable from a checkout

from bench.timing import git_commit  # noqa: E402


def peak_rss_mib() -> float:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmHWM")).split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--core", choices=["fused", "stacked"], default="fused")
    parser.add_argument("--res", default="768x512", help="WxH")
    parser.add_argument("--iters", type=int, default=2)
    args = parser.parse_args()
    import mambaic
    import mambaic_kernels as mk
    from mambaic.layers.ss2d import legacy_core

    W, H = (int(v) for v in args.res.split("x"))
    torch.manual_seed(0)
    model = mambaic.MambaIC().eval()
    x = torch.rand(1, 3, H, W)
    start = peak_rss_mib()
    core = legacy_core if args.core == "stacked" else contextlib.nullcontext
    with torch.no_grad(), mk.use_backend("cpu"), core():
        t = time.perf_counter()
        model(x)
        warm = time.perf_counter() - t
        times = []
        if args.iters > 0:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
        for _ in range(args.iters):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    timed = f"forward {statistics.median(times):.1f} s ({', '.join(f'{t:.1f}' for t in times)})" if times else "no timed runs"
    print(f"{args.core} core, {W}x{H}, {torch.get_num_threads()} threads, commit {git_commit()}: warm-up {warm:.1f} s, "
          f"{timed}, peak RSS {peak_rss_mib():.0f} MiB (model and input {start:.0f} MiB)")


if __name__ == "__main__":
    main()
