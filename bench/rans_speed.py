"""The C++ rANS coder against CompressAI's, per call, on the CPU.

    python bench/rans_speed.py [--symbols 393216] [--iters 9]

One slice colour of a 2048x1536 image holds 64 x 96 x 64 = 393,216 symbols. Symbols are
round(2 x randn) coded with rows 10..40 of the official model's Gaussian table (random weights,
seed 0, after update()): what MambaIC codes. Both coders get int32 CPU tensors; CompressAI's time
includes its list conversions (symbols, indexes, the CDF table), as ``EntropyModel.compress`` /
``decompress`` do them on every call; ours (``mambaic.models.rans``) reads the tensors in place.
p50 of --iters calls after one warm-up; the strings are checked equal.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` importable from a checkout

from bench.timing import git_commit  # noqa: E402


def p50_ms(fn, iters: int) -> float:
    fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=393_216)
    parser.add_argument("--iters", type=int, default=9)
    args = parser.parse_args(argv)

    from compressai import ans

    import mambaic
    from mambaic.models import rans

    model = mambaic.random_model(0)
    model.update()
    gc = model.gaussian_conditional
    g = torch.Generator().manual_seed(0)
    symbols = (2 * torch.randn(1, args.symbols, generator=g)).round().int()
    indexes = torch.randint(10, 41, (1, args.symbols), generator=g, dtype=torch.int32)

    def compressai_encode():
        return [ans.RansEncoder().encode_with_indexes(symbols[0].tolist(), indexes[0].tolist(), gc._quantized_cdf.tolist(),
                                                      gc._cdf_length.tolist(), gc._offset.tolist())]  # fmt: skip

    def compressai_decode(strings):
        values = ans.RansDecoder().decode_with_indexes(strings[0], indexes[0].tolist(), gc._quantized_cdf.tolist(),
                                                       gc._cdf_length.tolist(), gc._offset.tolist())  # fmt: skip
        return torch.tensor(values, dtype=torch.int32)

    strings = rans.encode_symbols(gc, symbols, indexes)
    assert strings == compressai_encode(), "the C++ coder's string differs from CompressAI's"
    assert torch.equal(rans.decode_symbols(gc, strings, indexes), symbols)
    rows = {
        "encode": (p50_ms(compressai_encode, args.iters), p50_ms(lambda: rans.encode_symbols(gc, symbols, indexes), args.iters)),
        "decode": (p50_ms(lambda: compressai_decode(strings), args.iters),
                   p50_ms(lambda: rans.decode_symbols(gc, strings, indexes), args.iters)),
    }  # fmt: skip
    bits = 8 * len(strings[0]) / args.symbols
    print(f"commit {git_commit()} | {args.symbols:,} symbols, {bits:.2f} bits per symbol | p50 of {args.iters}, ms\n")
    print("| | CompressAI's coder | mambaic.models.rans | speed-up |\n|---|---|---|---|")
    for name, (old, new) in rows.items():
        print(f"| {name} | {old:.1f} | {new:.1f} | {old / new:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
