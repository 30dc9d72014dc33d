"""Checks that make a wrong decode impossible: the model's identity before decoding, and each
part's latent checksum as soon as the entropy decoder has produced it.

Why per part and at once: a decoder whose arithmetic differs from the encoder's in the last bit
can pick another CDF for one symbol; from there the arithmetic decoder is out of step and every
later symbol, slice and pixel is noise. The first failing part names where it happened, and the
platform record of the file says what differs.
"""

from __future__ import annotations

import torch

from . import platform as plat
from .container import MicFile, latent_checksum, part_name


class ModelMismatchError(ValueError):
    """The .mic file was encoded with another model than the decoder's (weights or tables)."""


class WeightsMismatchError(ModelMismatchError):
    """The .mic file was encoded with other weights than the decoder's model."""


class TablesMismatchError(ModelMismatchError):
    """Same weights, but the entropy coder's tables differ from the encoder's."""


class PrecisionMismatchError(ModelMismatchError):
    """The .mic file was encoded in another precision mode (fp32, tf32, bf16, fp16) than the
    decoder's model runs in: y and x_hat depend on it."""


class LatentMismatchError(ValueError):
    """A decoded part's symbols differ from the encoder's: this platform cannot decode the file.

    Attributes: ``part`` (0 = z, 1 + 2i / 2 + 2i = anchors / non-anchors of slice i), ``differences``
    (fact, encoder's value, decoder's value), ``recorded`` and ``here`` (the two platforms).
    """

    def __init__(self, message: str, part: int, differences: list, recorded: dict, here: dict):
        super().__init__(message)
        self.part, self.differences, self.recorded, self.here = part, differences, recorded, here


class UnverifiedFileWarning(UserWarning):
    """A version 1 file: it records no latent checksums, so its decode cannot be verified."""


def check_precision(mic: MicFile, model: torch.nn.Module, source: str) -> None:
    """Refuse to decode ``mic`` in another precision than the encoder's (before the weights are
    compared: a model cast to another precision also has another fingerprint)."""
    recorded, here = (mic.platform or {}).get("precision"), plat.precision_of(model)
    if recorded is not None and recorded != here:
        raise PrecisionMismatchError(
            f"{source}: encoded in {recorded}, but this model runs in {here}; decode in {recorded} "
            f"(mambaic decompress --precision {recorded}, or model.set_precision({recorded!r}))"
        )


def check_model(mic: MicFile, model: torch.nn.Module, fingerprint: bytes, tables: bytes | None, source: str) -> None:
    """Refuse to decode ``mic`` with a model whose weights, or entropy tables, are not the encoder's."""
    if mic.fingerprint != fingerprint:
        raise WeightsMismatchError(
            f"{source}: encoded with other model weights (fingerprint {mic.fingerprint.hex()}, "
            f"N={mic.N}, M={mic.M}, depths={mic.depths}) than this model's (fingerprint {fingerprint.hex()}, "
            f"N={model.N}, M={model.M}, depths={model.depths}); decode with the checkpoint used to encode"
        )
    if mic.tables_fingerprint is not None and tables != mic.tables_fingerprint:
        raise TablesMismatchError(
            f"{source}: the weights are the encoder's, but the entropy coder's tables are not (tables fingerprint "
            f"{mic.tables_fingerprint.hex()} in the file, {tables.hex() if tables else 'none'} here): one side "
            f"loaded its tables from another checkpoint file or replaced them (update(force=True), "
            f"update_quantiles); decode with the tables used to encode"
        )


def _format(fact: str, recorded, here) -> str:
    if fact == "backends":
        recorded, here = recorded or {}, here or {}
        ops = [op for op in here if op in recorded and recorded[op] != here[op]]
        return "; ".join(f"{op} ran on {recorded[op]} in the encoder, {here[op]} here" for op in ops)
    return f"{fact} {recorded} in the encoder, {here} here"


class LatentVerifier:
    """The decoder's symbols hook: compares each part's checksum with the file's, in decoding order.

    ``used`` is the live dict of :func:`mambaic_kernels._backend.recording` around the decode, so
    that an error names the backends this decoder has run so far.
    """

    def __init__(self, mic: MicFile, source: str, used: dict, device: torch.device, precision: str):
        self.mic, self.source, self.used, self.device, self.precision = mic, source, used, device, precision
        self.checked = 0

    def __call__(self, part: int, symbols: torch.Tensor) -> None:
        got, want = latent_checksum(symbols), self.mic.checksums[part]
        if got == want:
            self.checked += 1
            return
        raise self._mismatch(
            part, f"decoded to other latents than the encoder's (checksum {got.hex()}, the file says {want.hex()})"
        )

    def undecodable(self, part: int, reason: str) -> LatentMismatchError:
        """The error for a part whose string the entropy decoder refused (``reason``: its
        CorruptStringError). A y part's CDF rows come from the means and scales this decoder
        computed: with another platform's, the encoder's string looks corrupt, and no checksum
        can be taken. Either way its symbols are not the encoder's; the message says what differs
        (or, when nothing does, that the file is damaged)."""
        return self._mismatch(part, f"could not be entropy-decoded ({reason})")

    def _mismatch(self, part: int, what_happened: str) -> LatentMismatchError:
        recorded = self.mic.platform or {}
        here = plat.current(self.device, self.used, self.precision)
        diffs = plat.differences(recorded, here)
        what = "; ".join(_format(*d) for d in diffs) or "none of the recorded facts"
        return LatentMismatchError(
            f"{self.source}: {part_name(part, self.mic.num_slices)} {what_happened}: this platform does not "
            f"reproduce the encoder's arithmetic. Encoded with {plat.describe(recorded)}; decoding with "
            f"{plat.describe(here)}. Differs: {what}. To decode it: {plat.advice(recorded, diffs)}",
            part,
            diffs,
            recorded,
            here,
        )
