"""Images to .mic bytes and back: padding, the model's compress / decompress, the container.

    encode_image:  x ── pad to 128 ── MambaIC.compress ── MicFile(header, platform, checksums, strings)
    decode_image:  bytes ── MicFile (all checks) ── weights / tables check ── follow the encoder's
                   backends ── MambaIC.decompress (each part's checksum checked as it is decoded) ── crop

The decoder rebuilds bit-exactly the y_hat that the encoder used when both run the same
arithmetic (device, kernel backend, CPU threads, versions): the encoder continues from the
dequantised values that the decoder will compute (see ``MambaIC._code_colour``), never from its
own unquantised latents. When the arithmetic differs, a latent can round the other way, and the
checksum of that part stops the decoder with an error that says what differs.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models import CompressionModel

from mambaic.image import crop, pad_to_multiple
from mambaic.layers.ss2d import legacy_core
from mambaic.models import MambaIC
from mambaic.models.entropy_tables import TABLE_BUFFERS
from mambaic.models.rans import CorruptStringError
from mambaic_kernels import _backend

from . import platform as plat
from .container import MicFile, MicFormatError, header_size, latent_checksum, pack_platform, part_name
from .fingerprint import legacy_fingerprint, tables_fingerprint, weights_fingerprint
from .verify import LatentVerifier, UnverifiedFileWarning, WeightsMismatchError, check_model, check_precision


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
    """Eval mode (no stochastic depth, rounding instead of noise), no autograd and cuDNN's
    deterministic algorithms, restored after: the decoder must recompute the encoder's means and
    scales bit for bit, and cuDNN's default choice may differ from run to run in the last bit
    (measured on an H200: two eager forwards' x_hat 1.2e-7 apart)."""
    was_training, was_deterministic = model.training, torch.backends.cudnn.deterministic
    model.eval()
    torch.backends.cudnn.deterministic = True
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
        torch.backends.cudnn.deterministic = was_deterministic


def _device(model: MambaIC) -> torch.device:
    return next(model.parameters()).device


def encode_image(model: MambaIC, x: torch.Tensor, fingerprint: bytes | None = None) -> Encoded:
    """Encode one image, (1, 3, H, W) in [0, 1] with any H, W >= 1, into .mic bytes.

    The header records the platform that ran the encoder (device, the backend of each op,
    precision, CPU threads, versions) and a checksum of each part's quantised latents.
    ``fingerprint`` may pass a precomputed :func:`weights_fingerprint` of ``model``; it is
    computed otherwise.
    """
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3 or x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"encode_image: x must be one RGB image of shape (1, 3, H, W), got {tuple(x.shape)}")
    model.update()  # CDF tables for the entropy coder; a no-op when they exist
    if fingerprint is None:
        fingerprint = weights_fingerprint(model)
    height, width = x.shape[-2:]
    device = _device(model)
    padded, (pad_bottom, pad_right) = pad_to_multiple(x.to(device))
    checksums: dict[int, bytes] = {}

    def record(part: int, symbols: torch.Tensor) -> None:
        checksums[part] = latent_checksum(symbols)

    with _coding_mode(model), _backend.recording() as used:
        out = model.compress(padded, symbols_hook=record)
    (y_strings, z_strings), z_shape = out["strings"], tuple(out["shape"])
    mic = MicFile(
        height=height, width=width, pad_bottom=pad_bottom, pad_right=pad_right,
        N=model.N, M=model.M, depths=model.depths, z_channels=model.entropy_bottleneck.channels,
        y_shape=tuple(out["y_hat"].shape[-2:]), z_shape=z_shape, fingerprint=fingerprint,
        z_string=z_strings[0], slices=[(anchor[0], non_anchor[0]) for anchor, non_anchor in y_strings],
        tables_fingerprint=tables_fingerprint(model), checksums=[checksums[p] for p in sorted(checksums)],
        platform=plat.current(device, used, plat.precision_of(model)),
    )  # fmt: skip
    return Encoded(mic.to_bytes(), mic, out["y_hat"])


def read_mic(data: bytes, source: str = "<bytes>") -> MicFile:
    """Parse and check .mic bytes (raises :class:`MicFormatError` naming source, field, offset)."""
    return MicFile.from_bytes(data, source)


# Decoding allocates maps proportional to the coded (padded) size before any string is read: a
# file may declare any size, so the decoder refuses what is above this unless told otherwise.
DEFAULT_MAX_PIXELS = 2**26  # 67 MP: 8192 x 8192


class ImageTooLargeError(ValueError):
    """A .mic file declares more pixels than the decoder was allowed (``max_pixels``)."""


def check_size(mic: MicFile, max_pixels: int | None, source: str) -> None:
    """Raise :class:`ImageTooLargeError` when ``mic`` codes more than ``max_pixels`` pixels
    (padding included; None: no limit)."""
    coded = (mic.height + mic.pad_bottom) * (mic.width + mic.pad_right)
    if max_pixels is not None and coded > max_pixels:
        raise ImageTooLargeError(
            f"{source}: declares a {mic.width}x{mic.height} image ({coded:,} pixels coded), above the limit of "
            f"{max_pixels:,} pixels; if you trust the file, raise the limit (--max-pixels, or max_pixels= in Python)"
        )


def encoder_backends(mic: MicFile, device: str) -> dict[str, str]:
    """The backends to decode ``mic`` with on ``device`` so as to follow its encoder.

    Each op gets the backend that ran it in the encoder when this machine has it for ``device``
    (and the encoder ran on the same kind of device). Ops left out (the encoder's backend is
    missing here, or ``auto`` used two for that op) keep ``auto``; the checksums then verify.
    """
    recorded = (mic.platform or {}).get("backends", {})
    if (mic.platform or {}).get("device") != device:
        return {}
    follow = {}
    for op, name in recorded.items():
        if op in _backend.OPS and name in _backend.BACKENDS:  # "triton+torch": auto used both
            if _backend.why_unavailable_typically(op, name, device) is None:
                follow[op] = name
    return follow


def _follows_encoder() -> bool:
    """True when no backend is chosen explicitly (MAMBAIC_BACKEND unset / auto, no use_backend)."""
    return all(_backend.requested(op)[0] == "auto" for op in _backend.OPS)


@contextlib.contextmanager
def _version1_tables(mic: MicFile, model: MambaIC, source: str):
    """Decode a version 1 file with the tables and the SS2D arithmetic its encoder had.

    Version 1 encoders computed the tables with CompressAI's own update() (float32, on the
    model's device) and hashed them with the weights. If the model's current tables don't give
    the file's fingerprint, those are recomputed for the decode and the model's restored after.
    The SS2D cores run as mambaic 0.1 ran them (``legacy_core``).
    """
    if legacy_fingerprint(model) == mic.fingerprint:
        with legacy_core():
            yield
        return
    modules = [m for m in model.modules() if isinstance(m, (EntropyBottleneck, GaussianConditional))]
    saved = [{name: getattr(m, name) for name in TABLE_BUFFERS if hasattr(m, name)} for m in modules]
    try:
        CompressionModel.update(model, force=True)
        if legacy_fingerprint(model) != mic.fingerprint:
            raise WeightsMismatchError(
                f"{source}: a version 1 file encoded with other model weights or entropy tables (fingerprint "
                f"{mic.fingerprint.hex()}, N={mic.N}, M={mic.M}, depths={mic.depths}; version 1 cannot tell "
                f"which); decode with the checkpoint used to encode. With that checkpoint, the tables may have "
                f"been computed on another kind of machine: version 1 tables are float32 and their last bits "
                f"depend on the machine's math library; decode on a machine like the encoder's"
            )
        with legacy_core():
            yield
    finally:
        for m, tables in zip(modules, saved):
            for name, value in tables.items():
                setattr(m, name, value)


def decode_image(
    model: MambaIC,
    data: bytes | MicFile,
    source: str = "<bytes>",
    fingerprint: bytes | None = None,
    *,
    follow_encoder: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode .mic bytes (or a parsed :class:`MicFile`) to (x_hat (1, 3, H, W) in [0, 1], y_hat).

    Raises :class:`MicFormatError` for a damaged file (also for a z string that no encoder
    wrote, behind correct CRCs), :class:`WeightsMismatchError` /
    :class:`TablesMismatchError` for another model, :class:`PrecisionMismatchError` for a model
    in another precision than the encoder's, and :class:`LatentMismatchError` as soon as
    a decoded part's checksum differs from the encoder's, or its string cannot be entropy-decoded
    with the CDF rows this decoder computed (this platform's arithmetic differs:
    the message says how and what to do). With ``follow_encoder`` and no backend chosen
    explicitly, each op runs on the backend the file records, where this machine has it.
    A version 1 file decodes with an :class:`UnverifiedFileWarning`. A file that codes more than
    ``max_pixels`` pixels raises :class:`ImageTooLargeError` before anything is allocated.
    """
    mic = data if isinstance(data, MicFile) else read_mic(data, source)
    check_size(mic, max_pixels, source)
    check_precision(mic, model, source)
    model.update()
    if fingerprint is None:
        fingerprint = weights_fingerprint(model)
    if mic.num_slices != model.num_slices and mic.fingerprint == fingerprint:  # a guard: same weights, same slices
        raise MicFormatError(source, "num_slices", 21, f"{mic.num_slices}, the model has {model.num_slices}")
    device = _device(model)
    if mic.verifiable:
        check_model(mic, model, fingerprint, tables_fingerprint(model), source)
        tables = contextlib.nullcontext()
    else:
        warnings.warn(
            UnverifiedFileWarning(
                f"{source} is a version {mic.version} .mic file: it records no latent checksums, so this decode "
                f"cannot be verified (a platform whose arithmetic differs from the encoder's decodes it to noise "
                f"without an error); re-encode the image to get a verifiable file"
            ),
            stacklevel=2,
        )
        tables = _version1_tables(mic, model, source)
    follow = encoder_backends(mic, device.type) if follow_encoder and _follows_encoder() else {}
    strings = [[[anchor], [non_anchor]] for anchor, non_anchor in mic.slices], [mic.z_string]
    with tables, _coding_mode(model), _backend.use_backend(follow), _backend.recording() as used:
        verify = LatentVerifier(mic, source, used, device, plat.precision_of(model)) if mic.verifiable else None
        try:
            out = model.decompress(list(strings), mic.z_shape, symbols_hook=verify)
        except CorruptStringError as exc:  # a string that cannot come from the encoder with these CDF rows
            if exc.part and verify is not None:  # a y part: its rows come from this platform's arithmetic
                raise verify.undecodable(exc.part, str(exc)) from None
            raise _corrupt_string(mic, data, source, exc) from None
    return crop(out["x_hat"], mic.height, mic.width), out["y_hat"]


def _corrupt_string(mic: MicFile, data: bytes | MicFile, source: str, exc: CorruptStringError) -> MicFormatError:
    """The entropy decoder's CorruptStringError as the .mic error: the file, "payload", and the
    offset of the string. z's CDF rows are fixed (one per channel) and its tables were checked, so
    its string is damaged, behind correct CRCs: its writer cut or coded the payload wrongly. A
    version 1 file's y part may also have been decoded with other arithmetic than its encoder's
    (such a file records nothing to tell)."""
    strings = mic.strings()
    part = exc.part if exc.part is not None else 0
    cause = ("the payload CRC matches, so the file was written so (string lengths that do not match the strings?)"
             if part == 0 else "the file is damaged, or this platform's arithmetic differs from its encoder's (a "
             "version 1 file records no checksums and no platform to tell; re-encode the image)")  # fmt: skip
    if isinstance(data, (bytes, bytearray, memoryview)):
        header = len(data) - sum(map(len, strings))
    else:  # a parsed file: its header as to_bytes would write it
        header = header_size(mic.num_slices, mic.version, len(pack_platform(mic.platform)) if mic.platform else 0)
    offset = header + sum(map(len, strings[:part]))
    return MicFormatError(
        source, "payload", offset,
        f"the string of {part_name(part, mic.num_slices)}: {exc}; {cause}",
    )  # fmt: skip
