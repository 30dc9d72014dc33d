"""Backend dispatch: the one place that decides which implementation runs an op.

``MAMBAIC_BACKEND=torch|triton|cuda|auto`` (default ``auto``) is read at call time, so a
process can change it between calls; :func:`use_backend` overrides it in code for a block, for
every op or op by op; :func:`recording` lists which backend ran each op inside a block (the
``.mic`` header records it, and the decoder follows it).

Each backend registers, per op, an implementation and a ``supports(**meta)`` verifier that
returns ``None`` when it can take the call or a sentence saying why not (device, dtype, the
extension not built...). ``auto`` takes the first of :data:`AUTO_ORDER` that accepts; an
explicitly named backend that cannot take the call raises :class:`BackendUnavailableError`
with its reason: never a silent switch to another backend.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from ._context import ContextSetting

log = logging.getLogger("mambaic_kernels")

ENV_VAR = "MAMBAIC_BACKEND"
# `cpu` is C++ for CPU tensors, compiled on first use (kernels/cpu/); `vmamba` is the optional
# baseline of VMamba's own CUDA scan (kernels/vmamba.py), never picked by auto.
BACKENDS = ("torch", "triton", "cuda", "cpu", "vmamba")
CHOICES = BACKENDS + ("auto",)
# Fastest first, per device type: `auto` takes the first backend that accepts the call. Triton on
# CPU tensors is its interpreter (for tests), never the fastest, so auto does not pick it there.
AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch")}
# Ops whose order differs, with the measured reason (H100, 2026-12-07, bench/RESULTS.md):
# cross_merge: the cuda forward is 2-12% slower than Triton's (Triton's 16-byte vector loads against
# our scalar ones; the cuda fwd+bwd is 1.3-2.3x faster, its backward being the cuda scan);
# window_attention: on the 2K latent the cuda kernels (tensor cores) take 0.128 ms of GPU time
# fwd+bwd, Triton's 0.089 ms (forward 0.030 against 0.017, backward 0.091 against 0.061). The cuda
# cross_scan is first: 1.7-3.8x faster than Triton's forward, 1.3-2.3x fwd+bwd (twelfth session).
AUTO_ORDER_BY_OP = {
    "cross_merge": {"cuda": ("triton", "cuda", "torch")},
    "window_attention": {"cuda": ("triton", "cuda", "torch")},
}
AUTO_FALLBACK = ("torch",)  # other devices (mps, xpu...): plain PyTorch
OPS = ("cross_scan", "cross_merge", "selective_scan", "window_attention", "ss2d_core")

# The module that registers each backend's implementations when imported.
_BACKEND_MODULES = {
    "torch": "mambaic_kernels.pytorch",
    "triton": "mambaic_kernels.triton",
    "cuda": "mambaic_kernels.cuda",
    "cpu": "mambaic_kernels.cpu",
    "vmamba": "mambaic_kernels.vmamba",
}


def extension_cache(name: str) -> "tuple[Path, Path | None]":
    """Where PyTorch's extension cache builds extension ``name``, and its compiled module there
    (None before the first build)."""
    from torch.utils import cpp_extension

    build_dir = Path(cpp_extension._get_build_directory(name, verbose=False))
    return build_dir, next(iter(sorted(build_dir.glob("*.so"))), None)


def announce_build(backend: str, name: str, seconds: int, what: str | None = None) -> None:
    """Say on stderr that ``backend``'s extension ``name`` is about to compile, when PyTorch's
    extension cache holds no build of it yet: the first call would otherwise sit silent.
    ``what`` names the extension when it is not a backend's kernels."""
    import sys

    build_dir, built = extension_cache(name)
    if built is None:
        what = what or f"the {backend} backend's kernels"
        print(f"mambaic: compiling {what} for this machine (about {seconds} s, once; cached in {build_dir})...",
              file=sys.stderr, flush=True)


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run the call (not installed, no GPU, build failed)."""


@dataclass(frozen=True)
class Implementation:
    fn: Callable
    supports: Callable[..., "str | None"]


_registry: dict[str, dict[str, Implementation]] = {op: {} for op in OPS}
_load_errors: dict[str, str] = {}
_loaded: set[str] = set()
# use_backend's choice: one backend name for every op, or {op: name} for some ops.
_override: ContextSetting[str | dict | None] = ContextSetting("mambaic_backend", None)
_recorders: contextvars.ContextVar[tuple[dict, ...]] = contextvars.ContextVar("mambaic_backend_record", default=())
_logged_auto: set[tuple] = set()


def register(op: str, backend: str, fn: Callable, supports: Callable[..., "str | None"]) -> None:
    """Register ``fn`` as ``backend``'s implementation of ``op`` (called by the backend modules)."""
    if op not in _registry:
        raise ValueError(f"register: unknown op {op!r}; ops are {', '.join(OPS)}")
    if backend not in BACKENDS:
        raise ValueError(f"register: unknown backend {backend!r}; backends are {', '.join(BACKENDS)}")
    _registry[op][backend] = Implementation(fn, supports)


# Under torch.compile the first call of a backend imports it while dynamo traces, and imports are
# not traceable: dynamo runs this eagerly instead and keeps its answer (a load happens once).
@torch.compiler.assume_constant_result
def _load(backend: str) -> str | None:
    """Import a backend's module once; return why it failed to load, or None."""
    if backend not in _loaded:
        _loaded.add(backend)
        try:
            importlib.import_module(_BACKEND_MODULES[backend])
        except Exception as exc:  # any import failure makes the backend unavailable, with its reason
            _load_errors[backend] = f"{type(exc).__name__}: {exc}"
    return _load_errors.get(backend)


def requested(op: str | None = None) -> tuple[str, str]:
    """The backend asked for ``op`` and who asked: the innermost :func:`use_backend` that names
    it (or names one backend for all ops), else ``$MAMBAIC_BACKEND``."""
    value = _override.get()
    if isinstance(value, dict):
        value = value.get(op)
        if value is not None:
            return value, f"use_backend({{{op!r}: {value!r}}})"
    elif value is not None:
        return value, f"use_backend({value!r})"
    name = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if name not in CHOICES:
        raise ValueError(f"{ENV_VAR}={name!r} is not a backend; choose one of {'|'.join(CHOICES)}")
    return name, f"{ENV_VAR}={name}"


@contextlib.contextmanager
def use_backend(name: "str | dict[str, str]") -> Iterator[None]:
    """Run the block with ``name`` as the backend, whatever ``MAMBAIC_BACKEND`` says.

    ``name`` is one backend for every op, or a dict {op: backend} for some ops (the others keep
    the variable's choice).

    >>> with use_backend("torch"):
    ...     y = cross_scan(x)
    >>> with use_backend({"selective_scan": "triton", "cross_scan": "torch"}):
    ...     ...
    """
    choices = name.items() if isinstance(name, dict) else [(None, name)]
    for op, backend in choices:
        if op is not None and op not in OPS:
            raise ValueError(f"use_backend: {op!r} is not an op; ops are {', '.join(OPS)}")
        if backend not in CHOICES:
            raise ValueError(f"use_backend: {backend!r} is not a backend; choose one of {'|'.join(CHOICES)}")
    if isinstance(name, dict):  # per op, on top of what an enclosing use_backend chose
        outer = _override.get()
        name = {**({op: outer for op in OPS} if isinstance(outer, str) else outer or {}), **name}
    with _override.set(name):
        yield


@contextlib.contextmanager
def recording() -> Iterator[dict[str, list[str]]]:
    """Collect, for each op called in the block, the backends that ran it (in first-use order).
    Blocks nest: each sees every call made inside it.

    >>> with recording() as used:
    ...     model(x)
    >>> used
    {'cross_scan': ['triton'], 'selective_scan': ['triton'], ...}
    """
    used: dict[str, list[str]] = {}
    token = _recorders.set(_recorders.get() + (used,))
    try:
        yield used
    finally:
        _recorders.reset(token)


def _note(op: str, backend: str) -> None:
    if torch.compiler.is_compiling():  # a trace runs once, not per call: nothing to record
        return
    for used in _recorders.get():
        if backend not in used.setdefault(op, []):
            used[op].append(backend)


def direct_launch_ok(*tensors) -> bool:
    """True for an eager call that autograd, torch.compile and tracing will not see.

    The custom-op dispatch costs ~15 us of CPU a call (~30 us when autograd records it), more
    than a window-attention kernel or the cross_scan of a small map takes on the GPU, so such
    calls launch the kernel directly. Everything else (gradients needed, compiling, a dispatch
    mode such as FakeTensor or make_fx, tensor subclasses) goes through the registered op.
    """
    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return False
    if any(type(t) is not torch.Tensor for t in tensors):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def why_unavailable(op: str, backend: str, **meta) -> str | None:
    """None if ``backend`` can run ``op`` for a call described by ``meta``, else the reason."""
    err = _load(backend)
    if err is not None:
        return f"the {backend} backend failed to load ({err})"
    impl = _registry[op].get(backend)
    if impl is None:
        return f"the {backend} backend has no {op} kernel"
    return impl.supports(**meta)


# A typical call of each op in MambaIC (float32, d_state 16, 8x8 windows of 16-channel heads):
# what `mambaic info` and the .mic decoder ask a backend before any real call.
TYPICAL_CALL = dict(dtype=torch.float32, d_state=16, window=8, head_dim=16)


def why_unavailable_typically(op: str, backend: str, device: str) -> str | None:
    """None if ``backend`` can run MambaIC's usual calls of ``op`` on ``device``, else why not."""
    return why_unavailable(op, backend, device=device, **TYPICAL_CALL)


def available_backends(op: str, **meta) -> list[str]:
    return [b for b in BACKENDS if why_unavailable(op, b, **meta) is None]


def resolve(op: str, **meta) -> Callable:
    """The implementation of ``op`` that the requested backend gives for this call."""
    fn = _resolve(op, **meta)
    if torch.autograd.profiler._is_profiler_enabled:
        # a named range per op call, so a profile can attribute kernel time to ops (bench/latency.py)
        return functools.partial(_profiled, f"mambaic_kernels::{op}", fn)
    return fn


def _profiled(name: str, fn: Callable, *args):
    with torch.autograd.profiler.record_function(name):
        return fn(*args)


def profiled_range(op: str):
    """A profiler range named like the op's own (``mambaic_kernels::<op>``), for a step inside a
    composite op (the scans inside ss2d_core); a no-op when no profiler runs."""
    if torch.autograd.profiler._is_profiler_enabled:
        return torch.autograd.profiler.record_function(f"mambaic_kernels::{op}")
    return contextlib.nullcontext()


def _resolve(op: str, **meta) -> Callable:
    name = _choose(op, **meta)
    _note(op, name)
    return _registry[op][name].fn


def auto_order(op: str, device: "str | None") -> tuple[str, ...]:
    """The backends auto tries for ``op`` on ``device``, fastest first."""
    return AUTO_ORDER_BY_OP.get(op, {}).get(device) or AUTO_ORDER.get(device, AUTO_FALLBACK)


def _choose(op: str, **meta) -> str:
    """The name of the backend that runs this call (the requested one, or auto's pick)."""
    name, source = requested(op)
    if name != "auto":
        reason = why_unavailable(op, name, **meta)
        if reason is not None:
            avail = available_backends(op, **meta)
            raise BackendUnavailableError(
                f"{source}, but {reason}; "
                f"backends available for this {op} call: {'|'.join(avail + ['auto'])}"
            )
        return name
    rejected = {}
    for candidate in auto_order(op, meta.get("device")):
        reason = why_unavailable(op, candidate, **meta)
        if reason is None:
            key = (op, candidate, tuple(sorted(meta.items())))
            if key not in _logged_auto:
                _logged_auto.add(key)
                log.info("auto backend for %s %s: %s (rejected: %s)", op, meta, candidate, rejected)
            return candidate
        rejected[candidate] = reason
    raise BackendUnavailableError(f"no backend can run {op} for {meta}: {rejected}")


def backend_report() -> dict[str, str | None]:
    """Per backend: None when it loads, else why not (for ``mambaic info``)."""
    return {b: _load(b) for b in BACKENDS}
