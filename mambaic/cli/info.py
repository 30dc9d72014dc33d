"""`mambaic info`: versions, the GPU, and for each kernel backend whether it loads or why not."""

from __future__ import annotations

import argparse
import platform


def collect() -> dict:
    import torch

    import mambaic
    from mambaic_kernels import _backend

    try:
        import triton

        triton_version = triton.__version__
    except ImportError as exc:
        triton_version = f"not installed ({exc})"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (torch.cuda.is_available() is False)"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backends = {}
    for name in _backend.BACKENDS:
        reasons = {op: _backend.why_unavailable(op, name, device=device, dtype=torch.float32, d_state=16, window=8, head_dim=16)
                   for op in _backend.OPS}
        missing = {op: r for op, r in reasons.items() if r is not None}
        backends[name] = "available" if not missing else "; ".join(sorted(set(missing.values())))
    return {
        "mambaic": mambaic.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda (torch build)": torch.version.cuda or "none (CPU build)",
        "gpu": gpu,
        "backends (float32, " + device + ")": backends,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mambaic info", description=__doc__)
    parser.parse_args(argv)
    for key, value in collect().items():
        if isinstance(value, dict):
            print(f"{key}:")
            for name, status in value.items():
                print(f"  {name:<8} {status}")
        else:
            print(f"{key:<20} {value}")
    return 0
