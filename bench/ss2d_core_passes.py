"""Time each pass of the fused triton ss2d_core, and the whole op with delta from a matmul or in registers.

    python bench/ss2d_core_passes.py                          # dim 512, 768 x 768, R 16 (bench/ops.py's case)
    python bench/ss2d_core_passes.py --dim 512 --height 1024 --width 768

One direction's passes at the op's own chunk count (the launcher's choice): the chunk summary
and the main scan, each with delta read from memory and computed in registers (the constexpr
DELTA_IN_REGISTERS), reversed or not, accumulating or not; the transpose, the two matmuls and
the merge; the public selective_scan on one direction's worth of channels (the same work). Median
of CUDA-event timings after a warm-up (bench/timing.py). This is what "Delta" in
kernels/triton/ss2d_core.py cites.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` importable from a checkout

from bench import ops  # noqa: E402
from bench.timing import cuda_event_times, git_commit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--rank", type=int, default=16, help="dt rank R")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("ss2d_core_passes.py times CUDA kernels: it needs a GPU")
    from mambaic_kernels.triton import selective_scan as ts
    from mambaic_kernels.triton import ss2d_core as sc

    a = ops.ss2d_core_case(D=args.dim, H=args.height, W=args.width, R=args.rank).make()
    u, w_x, w_dt, bias, A_logs, Ds = (a[k] for k in ("u", "x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds"))
    batch, D, H, W = u.shape
    L, R, N = H * W, args.rank, A_logs.shape[1]
    C = R + 2 * N
    cfg = ts._tile_config(N, ts._FWD_TILES)
    n_chunks, per_chunk = ts._chunking(batch, D, L, ts._FWD_TILES, u.device, ts._FWD_PROGRAMS_PER_SM)
    grid = (triton.cdiv(D, cfg["BD"]), batch, n_chunks)
    seq = u.view(batch, D, L)
    dbl = torch.matmul(w_x[0::2].reshape(2 * C, D), seq)
    delta = torch.matmul(w_dt[0], dbl[:, :R])
    A = -torch.exp(A_logs[:D])
    acc = torch.zeros(batch, D, L, device=u.device)
    carries = torch.zeros(batch, D, n_chunks, N, device=u.device)
    dsums = torch.zeros(batch, D, n_chunks, device=u.device)
    common = dict(L=L, KD=D, N=N, R=R, bstride=2 * C * L, n_chunks=n_chunks, chunk_tiles=per_chunk,
                  num_warps=ts._FWD_TILES.warps, **cfg)  # fmt: skip

    def main_pass(in_registers, rev=False, accumulate=False):
        return lambda: sc._ss2d_direction_fwd_kernel[grid](
            seq, dbl, w_dt[0], delta, A, Ds[:D], bias[0], acc, carries, CHUNKED=n_chunks > 1, REV=rev,
            ACCUMULATE=accumulate, DELTA_IN_REGISTERS=in_registers, **common)

    def summary_pass(in_registers, rev=False):
        return lambda: sc._ss2d_direction_summary_kernel[grid](
            seq, dbl, w_dt[0], delta, A, bias[0], carries, dsums, REV=rev, DELTA_IN_REGISTERS=in_registers,
            **common)

    op_args = (u, w_x, w_dt, bias, A_logs, Ds, n_chunks)
    B1 = dbl[:, R : R + N].contiguous().view(batch, 1, N, L)
    C1 = dbl[:, R + N : C].contiguous().view(batch, 1, N, L)
    rows = [
        ("whole op, delta from a matmul", lambda: torch.ops.mambaic.ss2d_core_fwd_triton(*op_args, False)),
        ("whole op, delta in registers", lambda: torch.ops.mambaic.ss2d_core_fwd_triton(*op_args, True)),
        ("main pass, delta read", main_pass(False)),
        ("main pass, delta in registers", main_pass(True)),
        ("main pass, delta read, reversed", main_pass(False, rev=True)),
        ("main pass, delta read, accumulating", main_pass(False, accumulate=True)),
        ("summary pass, delta read", summary_pass(False)),
        ("summary pass, delta in registers", summary_pass(True)),
        ("delta matmul (one direction)", lambda: torch.matmul(w_dt[0], dbl[:, :R], out=delta)),
        ("x_proj matmul (one pair)", lambda: torch.matmul(w_x[0::2].reshape(2 * C, D), seq)),
        ("transpose", lambda: sc._transposed(u)),
        ("public selective_scan, one direction", lambda: ts.selective_scan(seq, delta, A, B1, C1, Ds[:D], bias[0], True)),
    ]
    print(f"{torch.cuda.get_device_name()} | commit {git_commit()} | dim {D}, {H} x {W}, R {R}, N {N}, "
          f"{n_chunks} chunks per direction")
    print("| pass | median ms |\n|---|---|")
    with torch.no_grad():
        for name, fn in rows:
            print(f"| {name} | {statistics.median(cuda_event_times(fn, warmup=2, iters=10)):.3f} |")


if __name__ == "__main__":
    main()
