"""Every CUDA source compiles for every architecture we ship (object files only: no GPU needed),
so that the cuda backend cannot rot on machines without a GPU. The torch bindings (.cpp) compile
with the extension itself; the .cu files include no torch header."""

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mambaic_kernels.cuda_build import ARCHS, build_state, nvcc_path

CSRC = Path(__file__).resolve().parents[2] / "kernels" / "cuda" / "csrc"
SOURCES = sorted(CSRC.glob("*.cu"))


def test_there_are_sources():
    assert {p.name for p in SOURCES} >= {"cross_scan.cu", "selective_scan_fwd.cu", "selective_scan_bwd.cu", "transpose.cu", "window_attention_fwd.cu",
                                          "window_attention_bwd.cu"}


def test_every_source_compiles_for_every_arch(tmp_path):
    nvcc = nvcc_path()
    if nvcc is None:
        pytest.skip("no nvcc on this machine (CUDA_HOME unset and none on PATH)")
    jobs = [(src, arch) for src in SOURCES for arch in ARCHS]

    def compile_one(job):
        src, arch = job
        sm = arch.replace(".", "")
        out = tmp_path / f"{src.stem}.sm_{sm}.o"
        cmd = [nvcc, "-O3", "-std=c++17", f"-gencode=arch=compute_{sm},code=sm_{sm}", "-c", str(src), "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        return job, proc.returncode, proc.stderr, out

    with ThreadPoolExecutor(max_workers=max(os.cpu_count() or 1, 1)) as pool:
        results = list(pool.map(compile_one, jobs))
    failed = [f"{src.name} for sm_{arch}: {stderr.strip()[:2000]}" for (src, arch), rc, stderr, _ in results if rc]
    assert not failed, "\n\n".join(failed)
    for _, _, _, out in results:
        assert out.stat().st_size > 0


def test_build_state_says_what_happens():
    state = build_state()
    assert state.startswith(("prebuilt", "built on first use", "not built"))
    if nvcc_path() is None:
        assert "no nvcc" in state


def test_library_headers_come_from_the_toolkit_when_it_has_them(tmp_path, monkeypatch):
    from mambaic_kernels.cuda_build import library_include_dirs

    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "cusparse.h").write_text("")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    assert library_include_dirs() == []


def test_library_headers_from_pip_when_the_toolkit_has_nvcc_alone(tmp_path, monkeypatch):
    from mambaic_kernels.cuda_build import library_include_dirs

    fake = tmp_path / "site" / "nvidia"  # as PyTorch's pip wheels lay them out (CUDA 13)
    (fake / "cu13" / "include").mkdir(parents=True)
    (fake / "cu13" / "include" / "cusparse.h").write_text("")
    (fake / "cu13" / "include" / "cublas_v2.h").write_text("")
    (fake / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(__import__("sys").modules, "nvidia", raising=False)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "toolkit-without-libraries"))
    assert str(fake / "cu13" / "include") in library_include_dirs()


def test_ahead_of_time_build_without_torch_says_what_to_run(tmp_path):
    """pip builds in an isolated environment without PyTorch unless told not to: setup.py must say so."""
    root = Path(__file__).resolve().parents[2]
    script = ("import builtins, runpy, sys\n"
              "real = builtins.__import__\n"
              "def no_torch(name, *a, **k):\n"
              "    if name == 'torch' or name.startswith('torch.'):\n"
              "        raise ImportError('No module named torch')\n"
              "    return real(name, *a, **k)\n"
              "builtins.__import__ = no_torch\n"
              "sys.argv = ['setup.py', '--name']\n"
              "runpy.run_path('setup.py', run_name='__main__')\n")
    proc = subprocess.run([__import__("sys").executable, "-c", script], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "MAMBAIC_BUILD_CUDA": "1"}, timeout=120)
    assert proc.returncode != 0
    assert "--no-build-isolation" in proc.stderr + proc.stdout, proc.stderr[-2000:]


def test_cuda_home_is_the_toolkit_of_the_nvcc_on_path_unless_that_is_a_wrapper(tmp_path, monkeypatch):
    from mambaic_kernels.cuda_build import cuda_home

    toolkit, wrapper = tmp_path / "cuda-13.0", tmp_path / "local"
    for folder in (toolkit / "bin", toolkit / "include", wrapper / "bin"):
        folder.mkdir(parents=True)
    (toolkit / "include" / "cuda_runtime_api.h").write_text("")
    for nvcc in (toolkit / "bin" / "nvcc", wrapper / "bin" / "nvcc"):
        nvcc.write_text("#!/bin/sh\n")
        nvcc.chmod(0o755)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(toolkit / "bin"))
    assert cuda_home() == str(toolkit)
    monkeypatch.setenv("PATH", str(wrapper / "bin"))  # a script exec-ing the real nvcc, as /usr/local/bin/nvcc here
    assert cuda_home() == "/usr/local/cuda"
    monkeypatch.setenv("CUDA_HOME", str(wrapper))
    assert cuda_home() == str(wrapper)


def test_the_first_use_build_follows_the_toolkit_when_pytorchs_guess_lacks_headers(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from mambaic_kernels.cuda_build import point_at_toolkit

    toolkit = tmp_path / "cuda"
    (toolkit / "include").mkdir(parents=True)
    (toolkit / "include" / "cuda_runtime_api.h").write_text("")
    monkeypatch.setenv("CUDA_HOME", str(toolkit))
    for guess in (None, "/usr/local", str(tmp_path / "missing")):  # what PyTorch took for an nvcc wrapper
        extension = SimpleNamespace(CUDA_HOME=guess)
        point_at_toolkit(extension)
        assert extension.CUDA_HOME == str(toolkit), guess
    kept = tmp_path / "other"  # a guess with the headers is PyTorch's to keep
    (kept / "include").mkdir(parents=True)
    (kept / "include" / "cuda_runtime_api.h").write_text("")
    extension = SimpleNamespace(CUDA_HOME=str(kept))
    point_at_toolkit(extension)
    assert extension.CUDA_HOME == str(kept)
