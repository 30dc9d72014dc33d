"""Short fingerprints of a model, stored in every .mic file.

A latent decoded with weights other than the encoder's is garbage (the entropy coder's indexes
come from the network), so the decoder compares fingerprints before touching the bitstream:

- :func:`weights_fingerprint`: the weights that define the model (every parameter and buffer
  of its state dict, except the entropy coder's tables). The same on every device.
- :func:`tables_fingerprint`: the entropy coder's tables (CDFs, offsets, lengths, scale table),
  which ``update()`` derives from the weights. Two models with the same weights have the same
  tables when both computed them with :meth:`MambaIC.update` (any device) or loaded them from
  the same checkpoint; a mismatch then means one side recomputed or replaced them.
- :func:`legacy_fingerprint`: version 1 files hashed both together.
"""

from __future__ import annotations

import hashlib

import torch

from mambaic.models.entropy_tables import is_table

FINGERPRINT_BYTES = 16
TABLES_FINGERPRINT_BYTES = 8


def _hash(named: list[tuple[str, torch.Tensor]], size: int) -> bytes:
    """SHA-256 over (name, dtype, shape, bytes) of each tensor, in name order; the first ``size`` bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(named, key=lambda item: item[0]):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.digest()[:size]


def _unique_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters and buffers, each once: a tensor registered under two names (the official
    checkpoints' ``context_vss_<i>`` aliases) keeps its first name."""
    return list(model.named_parameters()) + list(model.named_buffers())


def weights_fingerprint(model: torch.nn.Module) -> bytes:
    """16 bytes of SHA-256 over the model's weights (parameters and buffers, tables excluded).

    Independent of the device and of ``update()``; about 1 s for the full model on a CPU core.
    """
    return _hash([(n, t) for n, t in _unique_tensors(model) if not is_table(n)], FINGERPRINT_BYTES)


def tables_fingerprint(model: torch.nn.Module) -> bytes:
    """8 bytes of SHA-256 over the entropy coder's tables (call ``update()`` first)."""
    return _hash([(n, t) for n, t in _unique_tensors(model) if is_table(n)], TABLES_FINGERPRINT_BYTES)


def full_digest(model: torch.nn.Module) -> bytes:
    """The whole SHA-256 over every parameter and buffer: equal iff the tensors are bit-identical
    (distributed training compares its ranks with it)."""
    return _hash(_unique_tensors(model), 32)


def legacy_fingerprint(model: torch.nn.Module) -> bytes:
    """The fingerprint of version 1 files: weights and tables together."""
    return _hash(_unique_tensors(model), FINGERPRINT_BYTES)
