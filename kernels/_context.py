"""A context-local setting that code compiled by torch.compile reads too."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Generic, Iterator, TypeVar

import torch

T = TypeVar("T")


class ContextSetting(Generic[T]):
    """A value set for the duration of a ``with`` block, as a ContextVar, that torch.compile can
    trace. Dynamo before torch 2.12 cannot trace ``ContextVar.get`` (a graph break, an error under
    ``fullgraph=True``), so traced code reads a plain attribute instead: dynamo guards on it, and a
    compiled graph is traced again when the value changes. Eager code reads the ContextVar, which
    stays right across threads and tasks; traced code follows the latest ``set`` of any thread."""

    def __init__(self, name: str, default: T):
        self._var: contextvars.ContextVar[T] = contextvars.ContextVar(name, default=default)
        self.traced: T = default

    def get(self) -> T:
        return self.traced if torch.compiler.is_compiling() else self._var.get()

    @contextlib.contextmanager
    def set(self, value: T) -> Iterator[None]:
        token, traced = self._var.set(value), self.traced
        self.traced = value
        try:
            yield
        finally:
            self._var.reset(token)
            self.traced = traced
