"""Per-kernel benchmarks: `pytest bench/kernels --benchmark-only` on a GPU machine.

pytest-benchmark times each call wall-clock with a device synchronisation inside the timed
function (launch overhead included); beside it we record the CUDA-event p50 (GPU time) and the
GB/s over the op's minimum bytes, and at the end write a table and JSON records to
$MAMBAIC_BENCH_OUT (default bench/results/) headed by the machine line.
"""

import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # `bench` importable from a checkout

RECORDS = []


@pytest.fixture(scope="session")
def copy_gbs():
    if not torch.cuda.is_available():
        pytest.skip("the kernel benchmarks need a CUDA device")
    return __import__("bench.timing", fromlist=["copy_bandwidth_gbs"]).copy_bandwidth_gbs()


@pytest.fixture
def record():
    return RECORDS.append


def pytest_sessionfinish(session, exitstatus):
    if not RECORDS:
        return
    from bench.timing import machine

    out = Path(os.environ.get("MAMBAIC_BENCH_OUT", Path(__file__).resolve().parents[1] / "results"))
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    for r in RECORDS:
        r.update(info, timestamp=stamp)
    (out / "kernels.json").write_text(json.dumps(RECORDS, indent=1))
    lines = [f"GPU {info['gpu']}, CUDA {info['cuda']}, torch {info['torch']}, triton {info['triton']}, "
             f"commit {info['commit']}, copy bandwidth {RECORDS[0]['copy_gbs']:.0f} GB/s", "",
             "p50/p20/p80: CUDA events around one eager call; graph: CUDA-graph replay (GPU time, no launch "
             "cost), which GB/s uses when the call could be captured; kernels: the call's GPU kernel time summed by "
             "torch.profiler (the backward's GPU time); wall: pytest-benchmark median with a sync.", "",
             "| op | backend | mode | p50 ms | p20 | p80 | graph ms | kernels ms | wall ms | GB/s | % of copy | peak MiB "
             "| bit-identical |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in RECORDS:
        graph = "-" if r["graph_ms"] is None else f"{r['graph_ms']:.4f}"
        det = "-" if r["deterministic"] is None else ("yes" if r["deterministic"] else "NO")
        lines.append(f"| {r['op']} | {r['backend']} | {r['mode']} | {r['p50_ms']:.4f} | {r['p20_ms']:.4f} | "
                     f"{r['p80_ms']:.4f} | {graph} | {r['kernel_ms']:.4f} | {r['wall_ms']:.4f} | {r['gbs']:.0f} | "
                     f"{100 * r['gbs'] / r['copy_gbs']:.0f}% | {r['peak_mib']:.0f} | {det} |")
    (out / "kernels.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
