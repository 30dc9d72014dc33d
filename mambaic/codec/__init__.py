"""The .mic codec: container format, model fingerprints, platform records, verified encode / decode."""

from .container import MAGIC, VERSION, MicFile, MicFormatError, latent_checksum, part_name
from .fingerprint import legacy_fingerprint, tables_fingerprint, weights_fingerprint
from .image_codec import (
    DEFAULT_MAX_PIXELS,
    Encoded,
    ImageTooLargeError,
    check_size,
    decode_image,
    encode_image,
    encoder_backends,
    read_mic,
)
from .verify import (
    LatentMismatchError,
    ModelMismatchError,
    PrecisionMismatchError,
    TablesMismatchError,
    UnverifiedFileWarning,
    WeightsMismatchError,
    check_model,
    check_precision,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageTooLargeError",
    "check_size",
    "MAGIC",
    "VERSION",
    "Encoded",
    "LatentMismatchError",
    "MicFile",
    "MicFormatError",
    "ModelMismatchError",
    "PrecisionMismatchError",
    "TablesMismatchError",
    "UnverifiedFileWarning",
    "WeightsMismatchError",
    "check_model",
    "check_precision",
    "decode_image",
    "encode_image",
    "encoder_backends",
    "latent_checksum",
    "legacy_fingerprint",
    "part_name",
    "read_mic",
    "tables_fingerprint",
    "weights_fingerprint",
]
