"""Images to .mic bytes and back: padding, the model's compress / decompress, the container.

    encode_image:  x ── pad to 128 ── MambaIC.compress ── MicFile(header, strings) ── bytes
    decode_image:  bytes ── MicFile (all checks) ── fingerprint check ── MambaIC.decompress ── crop

The decoder rebuilds bit-exactly the y_hat that the encoder used when both run on the same
device and kernel backend: the encoder continues from the dequantised values that the decoder
will compute (see ``MambaIC._code_colour``), never from its own unquantised latents.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from mambaic.image import crop, pad_to_multiple
from mambaic.models import MambaIC

from .container import MicFile, MicFormatError
from .fingerprint import weights_fingerprint


class WeightsMismatchError(ValueError):
    """The .mic file was encoded with other weights than the decoder's model."""


@dataclass
class Encoded:
    """What :func:`encode_image` produced: the file bytes, its parsed form, and the quantised latent."""

    data: bytes
    mic: MicFile
    y_hat: torch.Tensor

    def bits_per_pixel(self, whole_file: bool = True) -> float:
        """Bits per original pixel, of the whole file or of the entropy-coded strings only."""
        size = len(self.data) if whole_file else sum(map(len, self.mic.strings()))
        return 8.0 * size / (self.mic.height * self.mic.width)


@contextlib.contextmanager
def _coding_mode(model: MambaIC):
    """Eval mode (no stochastic depth, rounding instead of noise) and no autograd, restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def encode_image(model: MambaIC, x: torch.Tensor, fingerprint: bytes | None = None) -> Encoded:
    """Encode one image, (1, 3, H, W) in [0, 1] with any H, W >= 1, into .mic bytes.

    ``fingerprint`` may pass a precomputed :func:`weights_fingerprint` of ``model`` (after
    ``update()``); it is computed otherwise.
    """
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3 or x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"encode_image: x must be one RGB image of shape (1, 3, H, W), got {tuple(x.shape)}")
    model.update()  # CDF tables for the entropy coder; a no-op when they exist
    if fingerprint is None:
        fingerprint = weights_fingerprint(model)
    height, width = x.shape[-2:]
    device = next(model.parameters()).device
    padded, (pad_bottom, pad_right) = pad_to_multiple(x.to(device))
    with _coding_mode(model):
        out = model.compress(padded)
    (y_strings, z_strings), z_shape = out["strings"], tuple(out["shape"])
    mic = MicFile(
        height=height, width=width, pad_bottom=pad_bottom, pad_right=pad_right,
        N=model.N, M=model.M, depths=model.depths, z_channels=model.entropy_bottleneck.channels,
        y_shape=tuple(out["y_hat"].shape[-2:]), z_shape=z_shape, fingerprint=fingerprint,
        z_string=z_strings[0], slices=[(anchor[0], non_anchor[0]) for anchor, non_anchor in y_strings],
    )  # fmt: skip
    return Encoded(mic.to_bytes(), mic, out["y_hat"])


def read_mic(data: bytes, source: str = "<bytes>") -> MicFile:
    """Parse and check .mic bytes (raises :class:`MicFormatError` naming source, field, offset)."""
    return MicFile.from_bytes(data, source)


def check_model(mic: MicFile, model: MambaIC, fingerprint: bytes, source: str = "<bytes>") -> None:
    """Refuse to decode ``mic`` with a model whose weights are not the encoder's."""
    if mic.fingerprint != fingerprint:
        raise WeightsMismatchError(
            f"{source}: encoded with other model weights (fingerprint {mic.fingerprint.hex()}, "
            f"N={mic.N}, M={mic.M}, depths={mic.depths}) than this model's (fingerprint {fingerprint.hex()}, "
            f"N={model.N}, M={model.M}, depths={model.depths}); decode with the checkpoint used to encode"
        )


def decode_image(
    model: MambaIC, data: bytes | MicFile, source: str = "<bytes>", fingerprint: bytes | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode .mic bytes (or a parsed :class:`MicFile`) to (x_hat (1, 3, H, W) in [0, 1], y_hat)."""
    mic = data if isinstance(data, MicFile) else read_mic(data, source)
    model.update()
    if fingerprint is None:
        fingerprint = weights_fingerprint(model)
    check_model(mic, model, fingerprint, source)
    if mic.num_slices != model.num_slices:  # same weights imply the same slices; kept as a guard
        raise MicFormatError(source, "num_slices", 21, f"{mic.num_slices}, the model has {model.num_slices}")
    strings = [[[anchor], [non_anchor]] for anchor, non_anchor in mic.slices], [mic.z_string]
    with _coding_mode(model):
        out = model.decompress(list(strings), mic.z_shape)
    return crop(out["x_hat"], mic.height, mic.width), out["y_hat"]
