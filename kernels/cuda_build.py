"""How the cuda backend's kernels are built, in one place, without importing the backend (which
would build them): the architectures of an ahead-of-time build and what ``mambaic info`` says.
Standard library only: setup.py reads ARCHS before the package is installed.

- Ahead of time: ``MAMBAIC_BUILD_CUDA=1 pip install -e .`` builds ``mambaic_kernels._cuda`` for
  ARCHS, unless ``TORCH_CUDA_ARCH_LIST`` says otherwise. CI compiles every .cu file for ARCHS.
- On first use: ``torch.utils.cpp_extension.load`` compiles for the GPU present, into PyTorch's
  extension cache (``$TORCH_EXTENSIONS_DIR``).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil

ARCHS = ("8.0", "9.0")  # Ampere (A100), Hopper (H100, H200); sm_90 adds 16-byte float atomics
JIT_NAME = "mambaic_cuda_kernels"  # the first-use build's name in the extension cache


def cuda_home() -> str:
    """The CUDA toolkit's folder: $CUDA_HOME or $CUDA_PATH; else the first folder holding the CUDA
    headers among the nvcc on PATH's parent (PyTorch's own guess), that of the file it links to,
    and /usr/local/cuda. PyTorch stops at its guess, which for an nvcc wrapper script in
    /usr/local/bin is /usr/local, without the headers."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        return home
    nvcc = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(p)) for p in (nvcc, os.path.realpath(nvcc))] if nvcc else []
    for home in candidates + ["/usr/local/cuda"]:
        if has_headers(home):
            return home
    return "/usr/local/cuda"


def has_headers(home: "str | None") -> bool:
    return bool(home) and os.path.exists(os.path.join(home, "include", "cuda_runtime_api.h"))


def point_at_toolkit(cpp_extension) -> None:
    """Make PyTorch's cpp_extension build with cuda_home() when its own guess lacks the headers.
    It reads CUDA_HOME once, when first imported (possibly by the cpu backend's build, before
    anything could set the variable), so its module global is what the first-use build follows."""
    if not has_headers(cpp_extension.CUDA_HOME) and has_headers(cuda_home()):
        cpp_extension.CUDA_HOME = cuda_home()


def library_include_dirs() -> list[str]:
    """Where the CUDA libraries' headers (cuBLAS, cuSPARSE, cuSOLVER) are, when the CUDA toolkit
    lacks them: PyTorch's CUDA headers include them, and a toolkit installed with nvcc alone (as on
    our CI machine) stops the build at ``cusparse.h``. PyTorch's pip wheels bring them under
    ``site-packages/nvidia`` (``cu13/include`` for CUDA 13, a folder per library for CUDA 12).
    Empty when the toolkit has them: its own headers are then used, as PyTorch's build does."""
    if os.path.exists(os.path.join(cuda_home(), "include", "cusparse.h")):
        return []
    spec = importlib.util.find_spec("nvidia")
    found = []
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        for name in ("cusparse.h", "cublas_v2.h", "cusolverDn.h"):
            for header in sorted(glob.glob(os.path.join(root, "*", "include", name))):
                if os.path.dirname(header) not in found:
                    found.append(os.path.dirname(header))
    return found


def library_header_flags() -> list[str]:
    """C++ flags that make library_include_dirs() searched last (-idirafter): the toolkit's own
    headers (cuda_runtime_api.h and the rest) keep precedence over the wheels' copies, which need
    parts of a toolkit they do not carry. Only the bindings include PyTorch's CUDA headers."""
    return [flag for folder in library_include_dirs() for flag in ("-idirafter", folder)]


def nvcc_path() -> str | None:
    candidate = os.path.join(cuda_home(), "bin", "nvcc")
    return candidate if os.path.exists(candidate) else shutil.which("nvcc")


def build_state() -> str:
    """One line: a prebuilt extension, a cached first-use build, or what the first use will do."""
    spec = importlib.util.find_spec("mambaic_kernels._cuda")
    if spec is not None:
        return f"prebuilt (MAMBAIC_BUILD_CUDA=1): {spec.origin}"
    from ._backend import extension_cache

    try:
        build_dir, built = extension_cache(JIT_NAME)  # creates the cache folder if missing
    except OSError as exc:
        return f"not built, and PyTorch's extension cache is not usable ({exc}): set TORCH_EXTENSIONS_DIR"
    if built is not None:
        return f"built on first use, cached: {built}"
    nvcc = nvcc_path()
    if nvcc is None:
        return "not built, and no nvcc found (set CUDA_HOME): the cuda backend cannot build"
    return f"not built yet: compiles on first use on a GPU (about a minute) with {nvcc}, into {build_dir}"
