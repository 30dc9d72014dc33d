"""The `cuda` backend: fused CUDA C++ kernels from the compiled extension ``mambaic_kernels._cuda``."""

try:
    from .. import _cuda  # noqa: F401
except ImportError as exc:
    raise ImportError(
        f"the CUDA extension mambaic_kernels._cuda is not built ({exc}); build it on a machine with nvcc "
        f"with `MAMBAIC_BUILD_CUDA=1 pip install -e .`"
    ) from exc
