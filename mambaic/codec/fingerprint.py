"""A short fingerprint of a model's weights, stored in every .mic file.

A latent decoded with weights other than the encoder's is garbage (the entropy coder's indexes
come from the network), so the decoder compares fingerprints before touching the bitstream.
"""

from __future__ import annotations

import hashlib

import torch

FINGERPRINT_BYTES = 16


def weights_fingerprint(model: torch.nn.Module) -> bytes:
    """The first 16 bytes of SHA-256 over every parameter and buffer: name, dtype, shape, bytes.

    Includes the entropy coder's CDF tables (so call ``update()`` first: the codec does) and is
    independent of the device. A tensor registered under two names (the official checkpoints'
    ``context_vss_<i>`` aliases) is hashed once. About 1 s for the full model on a CPU core.
    """
    digest = hashlib.sha256()
    named = list(model.named_parameters()) + list(model.named_buffers())
    for name, tensor in sorted(named, key=lambda item: item[0]):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.digest()[:FINGERPRINT_BYTES]
