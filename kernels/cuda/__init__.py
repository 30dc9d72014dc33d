"""The `cuda` backend: fused CUDA C++ kernels from the compiled extension ``mambaic_kernels._cuda``."""

from pathlib import Path

if not any((Path(__file__).parent / "csrc").rglob("*.cu")):
    raise ImportError("the CUDA C++ kernels are not written yet (kernels/cuda/csrc holds no sources); "
                      "use the triton backend on GPUs")

try:
    from .. import _cuda  # noqa: F401
except ImportError as exc:
    raise ImportError(
        f"the CUDA extension mambaic_kernels._cuda is not built ({exc}); build it on a machine with nvcc "
        f"with `MAMBAIC_BUILD_CUDA=1 pip install -e .`"
    ) from exc
