"""Argument checks shared by the public ops, all with one message format:

    <op>: <argument> must be <expected>, got <actual>[; <how to fix>]

They run once, in the public function, before dispatch, so every backend fails with the same
words. ValueError for shapes and values, TypeError for dtypes and types.
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_DTYPE_NAMES = "float32, float16, bfloat16 (float64 for reference checks)"


def tensor(op: str, name: str, x, ndim: int | None = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must have a floating dtype ({_DTYPE_NAMES}), got {x.dtype}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D, got shape {tuple(x.shape)}")


def shape(op: str, name: str, x: torch.Tensor, expected: tuple, what: str = "") -> None:
    if tuple(x.shape) != tuple(expected):
        extra = f" ({what})" if what else ""
        raise ValueError(f"{op}: {name} must have shape {tuple(expected)}{extra}, got {tuple(x.shape)}")


def same_device(op: str, ref_name: str, ref: torch.Tensor, **others) -> None:
    for name, x in others.items():
        if x is not None and x.device != ref.device:
            raise ValueError(f"{op}: {name} must be on {ref_name}'s device {ref.device}, got {x.device}")


def same_dtype(op: str, ref_name: str, ref: torch.Tensor, **others) -> None:
    for name, x in others.items():
        if x is not None and x.dtype != ref.dtype:
            raise TypeError(f"{op}: {name} must have {ref_name}'s dtype {ref.dtype}, got {x.dtype}")


def contiguous(op: str, name: str, x: torch.Tensor) -> None:
    # We refuse rather than copy: a silent .contiguous() would hide a full extra pass over memory.
    if not x.is_contiguous():
        raise ValueError(
            f"{op}: {name} must be contiguous, got strides {x.stride()} for shape {tuple(x.shape)}; "
            f"call .contiguous() on it first"
        )


def positive_int(op: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{op}: {name} must be a positive int, got {value!r}")


def meta(x: torch.Tensor, **extra) -> dict:
    """What a backend's ``supports`` looks at: device type, dtype, and op-specific sizes."""
    return {"device": x.device.type, "dtype": x.dtype, **extra}
