"""Compile the Triton selective-scan and SS2D-core kernels for an H100 / H200 (sm_90) on any machine.

The interpreter runs the kernels' Python, not Triton's compiler: code it accepts can still fail to
compile (a loop-carried variable changing type did, once). Here every kernel the launchers can
pick is compiled to a cubin from its source, with the constexprs the launchers pass, no GPU needed.
The compilation runs in a child process without TRITON_INTERPRET, under which @triton.jit gives
interpreter objects that the compiler cannot take.
"""

import itertools
import os
import subprocess
import sys


def compile_sm90(kernel, constexprs: dict, num_warps: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    # pointers as fp32 (what the model passes), every other runtime argument as int32
    signature = {name: "constexpr" if name in constexprs else "*fp32" if name.endswith("_ptr") else "i32"
                 for name in kernel.arg_names}
    return triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                          target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})


def launches():
    from mambaic_kernels.triton import selective_scan as ts

    fwd, bwd = ts._tile_config(16, ts._FWD_TILES), ts._tile_config(16, ts._BWD_TILES)
    bwd_summary = {k: v for k, v in bwd.items() if k != "EVEN_N"}
    for chunked, softplus in itertools.product((False, True), (False, True)):
        flags = dict(SOFTPLUS=softplus, HAS_BIAS=softplus)
        yield (ts._selective_scan_fwd_kernel, dict(fwd, **flags, HAS_D=True, STORE_STATES=chunked, CHUNKED=chunked),
               ts._FWD_TILES.warps)
        yield (ts._selective_scan_bwd_kernel, dict(bwd, **flags, HAS_D=True, ONE_GROUP=not chunked, CHUNKED=chunked),
               ts._BWD_TILES.warps)
    yield ts._fwd_chunk_summary_kernel, dict(fwd, SOFTPLUS=True, HAS_BIAS=True), ts._FWD_TILES.warps
    yield ts._bwd_chunk_summary_kernel, dict(bwd_summary, SOFTPLUS=True, HAS_BIAS=True, ONE_GROUP=True), ts._BWD_TILES.warps
    yield ts._chunk_carry_kernel, dict(REVERSE=True, BLOCK=128), 4
    from mambaic_kernels.triton import ss2d_core as sc

    # the model's d_state and a dt rank of 16 (d_model 256)
    for chunked, rev in ((False, False), (True, True)):
        yield sc._ss2d_direction_fwd_kernel, dict(fwd, R=16, CHUNKED=chunked, REV=rev, ACCUMULATE=rev, DELTA_IN_REGISTERS=rev), ts._FWD_TILES.warps
    yield sc._ss2d_direction_summary_kernel, dict(fwd, R=16, REV=True, DELTA_IN_REGISTERS=False), ts._FWD_TILES.warps
    yield sc._transpose_kernel, dict(BH=32, BW=32), 4
    yield sc._merge_kernel, dict(BD=32, BH=16, BW=16), 8


def main() -> int:
    failed = 0
    for kernel, constexprs, num_warps in launches():
        try:
            compiled = compile_sm90(kernel, constexprs, num_warps)
            assert compiled.asm.get("cubin"), "no cubin"
            print(f"ok {kernel.__name__} {constexprs}")
        except Exception as exc:
            failed += 1
            print(f"FAILED {kernel.__name__} {constexprs}:\n{exc}")
    return 1 if failed else 0


def test_scan_kernels_compile_for_sm90():
    import pytest

    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert run.stdout.count("\nok ") + run.stdout.startswith("ok ") == 16, run.stdout


if __name__ == "__main__":
    raise SystemExit(main())
