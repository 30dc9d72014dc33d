"""rANS entropy coding of an entropy model's symbols: CompressAI's strings, without its Python lists.

CompressAI's ``EntropyModel.compress`` / ``decompress`` hand its coder (``compressai.ans``) Python
lists: every call converts each symbol, each index and the whole CDF table (64 x 3133 ints for the
GaussianConditional) to lists, codes holding the GIL, and the decoder finds each symbol by a
linear search over its CDF row. Here:

* :class:`RansTables` keeps a module's tables as int32 CPU tensors, built once and rebuilt only
  when the module's table buffers are replaced (``update()``, ``install``, ``.to()``) or changed
  in place;
* the symbols and the indexes move to the CPU in one copy each;
* the C++ coder (``csrc/rans.cpp``, compiled on first use) reads those tensors in place with the
  GIL released, and decodes each symbol with a bucket lookup and a short binary search.

The strings are byte for byte CompressAI's (``tests/codec/test_rans.py``): the official
checkpoints' bitstreams and existing ``.mic`` files are unchanged. Where the extension cannot be
built (no C++ compiler), the same functions run CompressAI's own coder, after one warning.

Unlike CompressAI's coder, the C++ one takes any int32 symbol (CompressAI's int32 arithmetic
overflows, and its encoder loops forever, once a symbol lies about 2^27 beyond its table; and it
writes past its buffer for 0 or 1 symbol), and its decoder raises :class:`CorruptStringError`
for a string that no encoder can have written with the given CDF rows, instead of reading past
its end: a damaged string, or rows other than the encoder's (a decoder whose means and scales
differ from the encoder's picks other rows for the same symbols).

Measured on a 2-core CPU for 393,216 symbols (round(2 x randn), the Gaussian's rows 10..40, 4.5
bits per symbol), p50 per call, lists and copies included: encode 34 ms (CompressAI's coder and
its list conversions) -> 3.6 ms (:func:`encode_symbols`; 3.4 ms in C++), decode 54 ms -> 5.4 ms
(:func:`decode_symbols`; 5.2 ms in C++).
"""

from __future__ import annotations

import threading
import warnings
import weakref
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

__all__ = ["CorruptStringError", "RansTables", "compress", "decode_symbols", "decompress", "encode_symbols",
           "tables_of"]  # fmt: skip


class CorruptStringError(ValueError):
    """An entropy-coded string that no encoder can have written with the CDF rows it was decoded
    with: damaged, or decoded with other rows than the encoder's (found by the C++ decoder).

    Attributes: ``index``, the string's position in the batch, and ``part``, what the caller
    passed to :func:`decode_symbols` to say what the strings are (MambaIC: its part number).
    """

    def __init__(self, message: str, index: int | None = None, part: int | None = None):
        super().__init__(message)
        self.index, self.part = index, part


# -- the extension ------------------------------------------------------------------------------------

EXTENSION_NAME = "mambaic_rans"


def _build():
    import logging

    # cpp_extension warns at import that no CUDA runtime exists on CPU machines: true, and irrelevant
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    from mambaic_kernels import _backend

    source = Path(__file__).parent / "csrc" / "rans.cpp"
    _backend.announce_build("rans", EXTENSION_NAME, 60, what="the C++ rANS entropy coder")
    try:
        # -O3 only: no -march=native, so that a cache shared between machines stays valid
        return cpp_extension.load(name=EXTENSION_NAME, sources=[str(source)], extra_cflags=["-O3"], verbose=False)
    except Exception as exc:  # the compiler's message is the reason users see
        lines = str(exc).splitlines() or [type(exc).__name__]
        raise ImportError(next((line for line in lines if "error" in line.lower()), lines[0])) from exc


class _Extension:
    """The compiled coder, built once on first use. Where the build fails, ``get()`` warns once
    with the compiler's error and returns None: the callers then run CompressAI's coder, which
    writes the same strings."""

    def __init__(self, build: Callable = _build):
        self._build, self._lock = build, threading.Lock()
        self._module, self.error = None, None

    def get(self):
        if self._module is None and self.error is None:
            with self._lock:
                if self._module is None and self.error is None:
                    try:
                        self._module = self._build()
                    except Exception as exc:
                        self.error = f"{type(exc).__name__}: {exc}"
                        warnings.warn(
                            f"mambaic: the C++ rANS entropy coder could not be compiled ({self.error}); entropy "
                            f"coding runs CompressAI's coder instead (the same strings, about 10 times slower)",
                            RuntimeWarning,
                            stacklevel=3,  # the caller of encode_symbols / decode_symbols
                        )
        return self._module


_EXTENSION = _Extension()


# -- tables ---------------------------------------------------------------------------------------------

_TABLE_BUFFERS = ("_quantized_cdf", "_cdf_length", "_offset")


def _versions(tensors) -> tuple | None:
    """The tensors' in-place version counters; None for inference tensors, which keep none."""
    try:
        return tuple(t._version for t in tensors)
    except RuntimeError:
        return None


class RansTables:
    """An entropy model's CDF tables as the coder reads them: int32, contiguous, on the CPU.

    ``cdfs`` (num_cdfs, max_len), ``sizes`` and ``offsets`` (num_cdfs,) hold the module's
    ``_quantized_cdf``, ``_cdf_length`` and ``_offset`` (copies, or the buffers themselves when
    they already are such tensors). Use :func:`tables_of`, which keeps one per module.
    """

    def __init__(self, module: nn.Module):
        name = type(module).__name__
        buffers = tuple(getattr(module, b) for b in _TABLE_BUFFERS)
        cdfs, sizes, offsets = buffers
        if cdfs.numel() == 0 or sizes.numel() == 0 or offsets.numel() == 0:
            raise ValueError(f"{name}: the entropy coder's tables are empty; call update() on the model first")
        if cdfs.dim() != 2 or sizes.numel() != cdfs.shape[0] or offsets.numel() != cdfs.shape[0]:
            raise ValueError(
                f"{name}: _quantized_cdf must be (num_cdfs, max_len) with one _cdf_length and one _offset per row, "
                f"got {tuple(cdfs.shape)}, {tuple(sizes.shape)} and {tuple(offsets.shape)}; call update(force=True)"
            )
        self.cdfs = cdfs.detach().to("cpu", torch.int32).contiguous()
        self.sizes = sizes.detach().reshape(-1).to("cpu", torch.int32).contiguous()
        self.offsets = offsets.detach().reshape(-1).to("cpu", torch.int32).contiguous()
        self.device = cdfs.device  # where CompressAI's decompress puts its symbols
        # weak references: the identity of the buffers these tables come from, without keeping
        # replaced buffers alive
        self._sources = tuple(weakref.ref(b) for b in buffers)
        self._versions = _versions(buffers)
        self._lists = None

    def is_current(self, module: nn.Module) -> bool:
        """Whether the module's table buffers are still the ones these tables were built from,
        unchanged (same objects, same version counters)."""
        buffers = tuple(getattr(module, b) for b in _TABLE_BUFFERS)
        if any(ref() is not b for ref, b in zip(self._sources, buffers)):
            return False
        return self._versions is not None and _versions(buffers) == self._versions

    def lists(self) -> tuple[list, list, list]:
        """The tables as CompressAI's coder takes them (the fallback without the extension)."""
        if self._lists is None:
            self._lists = (self.cdfs.tolist(), self.sizes.tolist(), self.offsets.tolist())
        return self._lists


_tables: "weakref.WeakKeyDictionary[nn.Module, RansTables]" = weakref.WeakKeyDictionary()


def tables_of(module: nn.Module) -> RansTables:
    """``module``'s :class:`RansTables`, rebuilt when its table buffers were replaced or changed."""
    tables = _tables.get(module)
    if tables is None or not tables.is_current(module):
        tables = _tables[module] = RansTables(module)
    return tables


# -- coding ---------------------------------------------------------------------------------------------


def _rows_on_cpu(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(batch, ...) -> (batch, n) int32 contiguous on the CPU: one copy (CompressAI's ``.int()``)."""
    return x.detach().to("cpu", torch.int32).reshape(batch, -1).contiguous()


def encode_symbols(module: nn.Module, symbols: torch.Tensor, indexes: torch.Tensor) -> list[bytes]:
    """One string per batch element of integer ``symbols``, each coded with the CDF row of the
    same element of ``indexes``: CompressAI's ``EntropyModel.compress`` after its quantisation.

    ``symbols`` and ``indexes`` have the same shape (batch, ...), on any device; the symbols of an
    element are coded in their row-major order. ``module`` is the entropy model whose tables
    (``update()`` computed them) code them.
    """
    if symbols.dim() < 2:
        raise ValueError(f"rans.encode_symbols: symbols must be (batch, ...), got shape {tuple(symbols.shape)}")
    if symbols.shape != indexes.shape:
        raise ValueError(f"rans.encode_symbols: indexes must have the shape of symbols {tuple(symbols.shape)}, "
                         f"got {tuple(indexes.shape)}")  # fmt: skip
    tables = tables_of(module)
    batch = symbols.shape[0]
    if batch == 0:
        return []
    symbols, indexes = _rows_on_cpu(symbols, batch), _rows_on_cpu(indexes, batch)
    ext = _EXTENSION.get()
    if ext is None:
        from compressai import ans

        cdfs, sizes, offsets = tables.lists()
        encoder = ans.RansEncoder()
        return [encoder.encode_with_indexes(s.tolist(), i.tolist(), cdfs, sizes, offsets)
                for s, i in zip(symbols, indexes)]  # fmt: skip
    return [ext.encode(s, i, tables.cdfs, tables.sizes, tables.offsets) for s, i in zip(symbols, indexes)]


def _decode_with_compressai(tables: RansTables, string: bytes, indexes: torch.Tensor) -> torch.Tensor:
    """The fallback without the extension: CompressAI's decoder (which reads past the end of a
    corrupt string, and raises nothing)."""
    from compressai import ans

    cdfs, sizes, offsets = tables.lists()
    return torch.tensor(ans.RansDecoder().decode_with_indexes(string, indexes.tolist(), cdfs, sizes, offsets),
                        dtype=torch.int32)  # fmt: skip


def decode_symbols(
    module: nn.Module, strings: Sequence[bytes], indexes: torch.Tensor, *, part: int | None = None
) -> torch.Tensor:
    """The integer symbols of ``strings`` (one per batch element of ``indexes``, which gives each
    symbol's CDF row): int32 of the shape of ``indexes``, on the device of the module's tables,
    as CompressAI's ``EntropyModel.decompress`` returns them before its dequantisation.

    Raises :class:`CorruptStringError`, carrying ``part``, for a string that no encoder can have
    written with these CDF rows.
    """
    if not isinstance(strings, (tuple, list)):
        raise ValueError(f"rans.decode_symbols: strings must be a list of bytes, got {type(strings).__name__}")
    if indexes.dim() < 2:
        raise ValueError(f"rans.decode_symbols: indexes must be (batch, ...), got shape {tuple(indexes.shape)}")
    if len(strings) != indexes.shape[0]:
        raise ValueError(f"rans.decode_symbols: need one string per batch element of indexes ({indexes.shape[0]}), "
                         f"got {len(strings)}")  # fmt: skip
    for i, s in enumerate(strings):
        if not isinstance(s, (bytes, bytearray, memoryview)):
            raise TypeError(f"rans.decode_symbols: strings[{i}] must be bytes, got {type(s).__name__}")
    tables = tables_of(module)
    batch = len(strings)
    if batch == 0:
        return torch.empty(indexes.shape, dtype=torch.int32, device=tables.device)
    rows = _rows_on_cpu(indexes, batch)
    ext = _EXTENSION.get()
    decoded = []
    for i, (s, row) in enumerate(zip(strings, rows)):
        if ext is None:
            decoded.append(_decode_with_compressai(tables, bytes(s), row))
            continue
        try:
            decoded.append(ext.decode(bytes(s), row, tables.cdfs, tables.sizes, tables.offsets))
        except ext.CorruptStringError as exc:
            raise CorruptStringError(str(exc), index=i, part=part) from None
    symbols = decoded[0].unsqueeze(0) if batch == 1 else torch.stack(decoded)
    return symbols.reshape(indexes.shape).to(tables.device)


def compress(module: nn.Module, inputs: torch.Tensor, indexes: torch.Tensor, means: torch.Tensor | None = None):
    """``module.compress(inputs, indexes, means)`` of CompressAI's ``EntropyModel``: the same
    quantisation and the same strings (a list, one per batch element)."""
    if inputs.dim() < 2:
        raise ValueError(f"rans.compress: inputs must be (batch, ...), got shape {tuple(inputs.shape)}")
    if inputs.shape != indexes.shape:
        raise ValueError(f"rans.compress: indexes must have the shape of inputs {tuple(inputs.shape)}, "
                         f"got {tuple(indexes.shape)}")  # fmt: skip
    return encode_symbols(module, module.quantize(inputs, "symbols", means), indexes)


def decompress(
    module: nn.Module,
    strings: Sequence[bytes],
    indexes: torch.Tensor,
    dtype: torch.dtype = torch.float,
    means: torch.Tensor | None = None,
) -> torch.Tensor:
    """``module.decompress(strings, indexes, dtype, means)`` of CompressAI's ``EntropyModel``:
    the symbols dequantised (``+ means`` in the means' dtype, else cast to ``dtype``), on the
    device of the module's tables."""
    if means is not None:
        if means.shape[:2] != indexes.shape[:2] or (
            means.shape != indexes.shape and any(means.shape[i] != 1 for i in range(2, indexes.dim()))
        ):
            raise ValueError(f"rans.decompress: means must have the shape of indexes {tuple(indexes.shape)} or "
                             f"broadcast over its spatial dimensions, got {tuple(means.shape)}")  # fmt: skip
    return module.dequantize(decode_symbols(module, strings, indexes), means, dtype)
