"""Packaging. The Python packages are declared in pyproject.toml; this file only adds the optional
CUDA extension, built when MAMBAIC_BUILD_CUDA=1 (never decided by torch.cuda.is_available(): our
development and CI machines have nvcc but no GPU)."""

import os
import runpy
from pathlib import Path

from setuptools import find_packages, setup

PACKAGES = ["mambaic_kernels"] + [f"mambaic_kernels.{p}" for p in find_packages("kernels")]
PACKAGES += ["mambaic"] + [f"mambaic.{p}" for p in find_packages("mambaic")]

ext_modules, cmdclass = [], {}
if os.environ.get("MAMBAIC_BUILD_CUDA") == "1":
    build = runpy.run_path("kernels/cuda_build.py")
    os.environ.setdefault("CUDA_HOME", build["cuda_home"]())  # read when cpp_extension is imported
    try:
        from torch.utils.cpp_extension import BuildExtension, CUDAExtension
    except ImportError:  # pip's isolated build environment holds setuptools alone
        raise SystemExit(
            "MAMBAIC_BUILD_CUDA=1 builds against the PyTorch you run, which this build environment does not "
            "have: install torch first, then run `MAMBAIC_BUILD_CUDA=1 pip install --no-build-isolation -e .`"
        ) from None

    archs = build["ARCHS"]
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", ";".join(archs))  # BuildExtension turns it into -gencode flags
    csrc = Path("kernels/cuda/csrc")
    sources = sorted(str(p) for p in csrc.rglob("*.cpp")) + sorted(str(p) for p in csrc.rglob("*.cu"))
    if not sources:
        raise SystemExit(f"MAMBAIC_BUILD_CUDA=1, but {csrc} holds no CUDA sources yet: the cuda backend is not written")
    ext_modules.append(
        CUDAExtension(
            "mambaic_kernels._cuda",
            sources=sources,
            extra_compile_args={"cxx": ["-O3", *build["library_header_flags"]()], "nvcc": ["-O3"]},
        )
    )
    cmdclass["build_ext"] = BuildExtension

setup(packages=PACKAGES, ext_modules=ext_modules, cmdclass=cmdclass)
