"""The .mic codec: container format, weight fingerprints, and image encode / decode."""

from .container import MAGIC, VERSION, MicFile, MicFormatError
from .fingerprint import weights_fingerprint
from .image_codec import Encoded, WeightsMismatchError, check_model, decode_image, encode_image, read_mic

__all__ = [
    "MAGIC",
    "VERSION",
    "Encoded",
    "MicFile",
    "MicFormatError",
    "WeightsMismatchError",
    "check_model",
    "decode_image",
    "encode_image",
    "read_mic",
    "weights_fingerprint",
]
