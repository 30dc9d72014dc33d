"""What ran the encoder: the facts that decide its arithmetic, recorded in every .mic file.

A learned codec's decoder must recompute the encoder's entropy parameters exactly: one scale
that lands on the other side of a scale-table boundary desynchronises the arithmetic decoder.
Floats differ in their last bits between devices, kernel backends, CPU thread counts (MKL /
oneDNN block their sums by thread) and library versions, so the header records them, the
decoder follows them by default, and when a checksum fails it says which of them differ.

A platform is a plain dict (it is stored as JSON)::

    {"device": "cuda", "device_name": "NVIDIA H200", "backends": {"ss2d_core": "triton", ...},
     "precision": "fp32", "threads": 16, "mambaic": "0.2.0", "torch": "2.11.0+cu130",
     "triton": "3.6.0", "cuda": "13.0", "compressai": "1.2.8"}

``backends`` maps each op the model called (ss2d_core, window_attention) to the backend that ran
it ("triton+torch" if ``auto`` used both).
"""

from __future__ import annotations

import functools
import platform as _platform
from importlib import metadata

import torch

from mambaic.precision import name_of

# In the order an error message lists them: the facts most likely to explain a difference first.
FACTS = ("device", "device_name", "backends", "precision", "threads", "torch", "triton", "cuda", "compressai", "mambaic")


def precision_of(model: torch.nn.Module) -> str:
    """The model's precision mode (MambaIC.precision), else the name of its weights' dtype."""
    if hasattr(model, "precision"):
        return model.precision
    return name_of(next(model.parameters()).dtype)


@functools.lru_cache(maxsize=None)
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _platform.processor() or _platform.machine() or "unknown CPU"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def current(device: torch.device, backends: dict[str, list[str]], precision: str) -> dict:
    """This process's platform, for a model on ``device`` whose ops ran on ``backends``."""
    import mambaic

    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_name()
    return {
        "device": device.type,
        "device_name": name,
        "backends": {op: "+".join(names) for op, names in sorted(backends.items())},
        "precision": precision,
        "threads": torch.get_num_threads(),
        "mambaic": mambaic.__version__,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "cuda": torch.version.cuda or "none",
        "compressai": _version("compressai"),
    }


def _relevant(fact: str, recorded: dict, here: dict) -> bool:
    """Whether a difference in ``fact`` can change the arithmetic between these two platforms."""
    if fact == "threads":  # the CPU thread count matters only where the CPU computes
        return recorded.get("device") == here.get("device") == "cpu"
    if fact == "triton":
        uses = lambda p: any("triton" in b for b in p.get("backends", {}).values())  # noqa: E731
        return uses(recorded) or uses(here)
    if fact == "cuda":
        return "cuda" in (recorded.get("device"), here.get("device"))
    return True


def _backends_differ(recorded: dict, here: dict) -> bool:
    """Backends differ if an op both decoded so far ran elsewhere (ops not run yet don't count)."""
    rec, now = recorded.get("backends", {}), here.get("backends", {})
    return any(op in rec and rec[op] != b for op, b in now.items())


def differences(recorded: dict, here: dict) -> list[tuple[str, object, object]]:
    """(fact, recorded value, value here) for each fact that differs and can matter."""
    out = []
    for fact in FACTS:
        if fact == "backends":
            if _backends_differ(recorded, here):
                out.append((fact, recorded.get(fact), here.get(fact)))
        elif recorded.get(fact) != here.get(fact) and _relevant(fact, recorded, here):
            out.append((fact, recorded.get(fact), here.get(fact)))
    return out


def describe(p: dict) -> str:
    """One phrase: "backend triton on cuda (NVIDIA H200), fp32"."""
    names = sorted(set(p.get("backends", {}).values()))
    backend = f"backend {names[0]}" if len(names) == 1 else "backends " + ", ".join(
        f"{op}={b}" for op, b in sorted(p.get("backends", {}).items())
    )
    where = f"{p.get('device')} ({p.get('device_name')})"
    threads = f", {p.get('threads')} threads" if p.get("device") == "cpu" else ""
    return f"{backend} on {where}{threads}, {p.get('precision')}"


def advice(recorded: dict, diffs: list[tuple[str, object, object]]) -> str:
    """What to change so that the decoder reproduces the encoder's arithmetic."""
    steps = []
    facts = {fact for fact, _, _ in diffs}
    if "device" in facts or "device_name" in facts:
        device = recorded.get("device")
        steps.append(f"decode on {device} (--device {device}), on a {recorded.get('device_name')}")
    if "backends" in facts:
        names = set(recorded.get("backends", {}).values())
        if len(names) == 1 and "+" not in next(iter(names)):
            steps.append(f"decode with MAMBAIC_BACKEND={next(iter(names))} (or leave it unset: decompress follows the file)")
        else:
            steps.append("leave MAMBAIC_BACKEND unset so that decompress follows the file's backends")
    if "threads" in facts:
        steps.append(f"decode with {recorded.get('threads')} CPU threads (--threads {recorded.get('threads')})")
    versions = [f"{f} {recorded.get(f)}" for f in ("torch", "triton", "cuda", "compressai", "mambaic") if f in facts]
    if versions:
        steps.append("decode with " + ", ".join(versions))
    if "precision" in facts:
        steps.append(f"decode in {recorded.get('precision')}")
    if not steps:
        return "the platforms agree on every recorded fact: the file is damaged or this is a bug (please report it)"
    return "; ".join(steps)
