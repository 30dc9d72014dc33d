"""Sweep the Triton selective scan's tile shapes and chunk counts at one shape.

    python bench/scan_sweep.py                      # the issue's target shape, on a GPU
    python bench/scan_sweep.py --small              # a small shape (also under TRITON_INTERPRET=1)

For each tile shape (`Tiles` of kernels/triton/selective_scan.py) and chunk count it times the
forward, and optionally the backward, with CUDA events (median of --reps after a warm-up), checks
the output against the first configuration's and checks that two forwards give the same bits.
Results go to stdout as a table and, with --json, to a file (written after every configuration,
so a run cut short keeps what it measured). The defaults in the kernel module are chosen from it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ops import selective_scan_case  # noqa: E402

TILES = [  # (S2, Q, NPL, warps)
    (4, 4, 4, 4), (2, 4, 4, 4), (4, 4, 8, 4), (2, 4, 8, 4), (4, 2, 4, 4), (4, 4, 4, 8), (2, 8, 4, 4),
]


def parse_tiles(text: str) -> tuple[int, ...]:
    parts = tuple(int(v) for v in text.split(","))
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"--tiles takes S2,Q,NPL,warps, got {text!r}")
    return parts


def time_ms(fn, reps: int) -> float:
    if not torch.cuda.is_available():
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="B=2, KD=16, L=700: a quick check of every configuration")
    p.add_argument("--tiles", nargs="+", type=parse_tiles, default=None, help="S2,Q,NPL,warps (default: a built-in list)")
    p.add_argument("--chunks", nargs="+", default=["1", "auto"], help="chunk counts: numbers or 'auto'")
    p.add_argument("--backward", action="store_true", help="time the backward too")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--max-seconds", type=float, default=1e9, help="stop starting new configurations after this long")
    p.add_argument("--json", metavar="OUT.json")
    args = p.parse_args(argv)

    from mambaic_kernels.triton import selective_scan as ts

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch, K, N, KD, L = (2, 2, 16, 16, 700) if args.small else (1, 4, 16, 2048, 589_824)
    torch.manual_seed(0)
    case = selective_scan_case(batch, KD, L, N, K, device=dev.type)
    a = case.make()
    u, delta, A, B, C, D, bias = (a[k] for k in ("u", "delta", "A", "B", "C", "D", "delta_bias"))
    dy = torch.randn_like(u)
    minimum = case.fwd_bytes
    fwd, bwd = torch.ops.mambaic.selective_scan_fwd_triton, torch.ops.mambaic.selective_scan_bwd_triton
    print(f"shape B={batch} KD={KD} L={L} N={N} K={K}; minimum bytes {minimum / 1e9:.2f} GB", flush=True)

    rows, first_y, first_g = [], None, None
    start = time.perf_counter()
    for S2, Q, NPL, warps in args.tiles or TILES:
        tiles = ts.Tiles(S=4, S2=S2, Q=Q, NPL=NPL, warps=warps)
        ts._FWD_TILES = ts._BWD_TILES = tiles
        for chunks in args.chunks:
            if time.perf_counter() - start > args.max_seconds:
                print("stopping: --max-seconds reached", flush=True)
                break
            n = ts._chunking(batch, KD, L, tiles, dev, ts._FWD_PROGRAMS_PER_SM)[0] if chunks == "auto" else int(chunks)
            n = ts._split(triton_cdiv(L, ts._tile_steps(tiles)), n)[0]
            row = dict(S2=S2, Q=Q, NPL=NPL, warps=warps, BD=ts._tile_config(N, tiles)["BD"], chunks=n)
            try:
                t0 = time.perf_counter()
                y1, st = fwd(u, delta, A, B, C, D, bias, True, args.backward, n)
                y2, _ = fwd(u, delta, A, B, C, D, bias, True, False, n)
                row["compile_s"] = round(time.perf_counter() - t0, 1)
                row["deterministic"] = bool(torch.equal(y1, y2))
                if first_y is None:
                    first_y = y1
                row["max_rel_diff"] = float((y1 - first_y).abs().max() / first_y.abs().max())
                row["fwd_ms"] = time_ms(lambda: fwd(u, delta, A, B, C, D, bias, True, False, n), args.reps)
                row["fwd_GBps"] = minimum / row["fwd_ms"] / 1e6
                if args.backward:
                    gr = bwd(dy, u, delta, A, B, C, D, bias, True, st, n)
                    if first_g is None:
                        first_g = gr
                    row["bwd_max_rel_diff"] = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(gr, first_g))
                    row["bwd_ms"] = time_ms(lambda: bwd(dy, u, delta, A, B, C, D, bias, True, st, n), max(args.reps // 2, 1))
                del y1, y2, st
            except Exception as exc:  # a configuration that does not compile or fit: report it, go on
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            print(json.dumps(row), flush=True)
            rows.append(row)
            if args.json:
                Path(args.json).write_text(json.dumps(dict(shape=[batch, KD, L, N, K], rows=rows), indent=1))
    print()
    print("| S2 | Q | NPL | warps | BD | chunks | fwd ms | GB/s | bwd ms | rel. diff | deterministic |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['S2']} | {r['Q']} | {r['NPL']} | {r['warps']} | {r['BD']} | {r['chunks']} | {r['error']} |")
            continue
        print(f"| {r['S2']} | {r['Q']} | {r['NPL']} | {r['warps']} | {r['BD']} | {r['chunks']} | {r['fwd_ms']:.2f} | "
              f"{r['fwd_GBps']:.0f} | {r.get('bwd_ms', float('nan')):.1f} | {r['max_rel_diff']:.1e} | {r['deterministic']} |")
    return 0


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


if __name__ == "__main__":
    raise SystemExit(main())
