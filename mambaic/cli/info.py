"""`mambaic info [FILE.mic ...]`: versions, the GPU and the kernel backends; or what a .mic file records.

Without files: versions, the GPU, and for each kernel backend whether it loads or why not. With
files: each file's header (image and coded size, model, fingerprints, string lengths, latent
checksums) and the platform that encoded it.
"""

from __future__ import annotations

import argparse
import os
import platform

from ._model import UserError, run_command


def collect() -> dict:
    import torch

    import mambaic
    from mambaic_kernels import _backend
    from mambaic_kernels.cuda_build import build_state

    try:
        import triton

        triton_version = triton.__version__
    except ImportError as exc:
        triton_version = f"not installed ({exc})"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (torch.cuda.is_available() is False)"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backends = {}
    for name in _backend.BACKENDS:
        reasons = {op: _backend.why_unavailable_typically(op, name, device) for op in _backend.OPS}
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
        "cuda kernels": build_state(),
    }


def describe_file(path: str) -> dict:
    """What the header of a .mic file says, as printable fields (raises UserError if unreadable)."""
    from mambaic.codec import MicFormatError, part_name, read_mic

    try:
        with open(path, "rb") as f:
            data = f.read()
        mic = read_mic(data, os.fspath(path))
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except MicFormatError as exc:
        raise UserError(str(exc)) from None
    coded = f"{mic.width + mic.pad_right}x{mic.height + mic.pad_bottom}"
    fields = {
        "format": f"version {mic.version}" + ("" if mic.verifiable else " (no latent checksums: decodes unverified)"),
        "image": f"{mic.width}x{mic.height} (coded as {coded}, replicate padding)",
        "size": f"{len(data)} bytes, {8 * len(data) / (mic.width * mic.height):.4f} bpp",
        "model": f"N={mic.N}, M={mic.M}, depths={','.join(map(str, mic.depths))}, "
        f"slices={mic.num_slices}, z_channels={mic.z_channels}",
        "latent": f"y {mic.y_shape[0]}x{mic.y_shape[1]}, z {mic.z_shape[0]}x{mic.z_shape[1]}",
        "weights fingerprint": mic.fingerprint.hex(),
    }
    if mic.tables_fingerprint is not None:
        fields["tables fingerprint"] = mic.tables_fingerprint.hex()
    parts = {}
    for i, string in enumerate(mic.strings()):
        checksum = f", checksum {mic.checksums[i].hex()}" if mic.verifiable else ""
        parts[part_name(i, mic.num_slices)] = f"{len(string)} bytes{checksum}"
    fields["parts"] = parts
    if mic.platform is not None:
        p = dict(mic.platform)
        backends = p.pop("backends", {})
        fields["encoder platform"] = {**p, **{f"backend {op}": b for op, b in backends.items()}}
    return fields


def _print(fields: dict) -> None:
    for key, value in fields.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for name, status in value.items():
                print(f"  {name:<30} {status}")
        else:
            print(f"{key:<20} {value}")


def run(args: argparse.Namespace) -> None:
    if not args.files:
        _print(collect())
        return
    for i, path in enumerate(args.files):
        if len(args.files) > 1:
            print(("\n" if i else "") + f"== {path}")
        _print(describe_file(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mambaic info", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", metavar="FILE.mic", help="print what these .mic files record")
    return run_command(run, parser.parse_args(argv))
