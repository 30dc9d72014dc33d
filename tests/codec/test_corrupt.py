"""Damaged, truncated, foreign and mismatched .mic files fail with the file, field and byte offset,
before any byte reaches the entropy decoder."""

import struct
import zlib

import pytest
import torch

import mambaic
from mambaic.codec import MicFile, MicFormatError, WeightsMismatchError, decode_image, encode_image
from mambaic.codec.container import FIXED_SIZE

from .conftest import TINY


@pytest.fixture(scope="module")
def encoded(tiny):
    return encode_image(tiny, torch.rand(1, 3, 20, 30))


def _error(data: bytes) -> MicFormatError:
    with pytest.raises(MicFormatError) as info:
        MicFile.from_bytes(data, "x.mic")
    return info.value


def test_every_truncation_is_caught(encoded):
    data = encoded.data
    for n in range(len(data)):
        err = _error(data[:n])
        assert str(err).startswith("x.mic: ") and " at byte " in str(err), str(err)
    assert "truncated" in str(_error(data[:-1]))


@pytest.mark.parametrize(
    "offset, field",
    [(0, "magic"), (4, "version"), (6, "header_size"), (8, "header_crc32"), (30, "header_crc32"),
     (76, "header_size"), (80, "header_crc32"), (FIXED_SIZE[2] + 2, "header_crc32"),
     (FIXED_SIZE[2] + 4 * 11 + 1, "header_crc32"), (-1, "payload_crc32")],
    ids=lambda v: str(v),
)  # fmt: skip
def test_flipped_bit_names_the_field(encoded, offset, field):
    data = bytearray(encoded.data)
    data[offset] ^= 0x10
    err = _error(bytes(data))
    assert err.field == field, str(err)
    assert f"x.mic: {field} at byte " in str(err)


def test_messages(encoded):
    data = encoded.data
    assert str(_error(b"\x89PNG\r\n\x1a\n" + data[8:])) == (
        "x.mic: magic at byte 0: found b'\\x89PNG', expected b'MBIC': not a .mic file"
    )
    assert "format version 9 is not supported (this mambaic reads 1, 2)" in str(_error(data[:4] + b"\x09" + data[5:]))
    assert "has trailing bytes" in str(_error(data + b"\x00"))
    err = _error(data[:-1])
    assert err.field == "payload_size" and err.offset == 64
    assert "x.mic: height at byte 8: the file ends at byte 9" in str(_error(data[:9]))
    assert _error(b"").field == "magic"


def forge(data: bytes, offset: int, fmt: str, value) -> bytes:
    """Overwrite a header field and recompute the header CRC: a buggy or hostile writer's file."""
    data = bytearray(data)
    struct.pack_into("<" + fmt, data, offset, value)
    crc_at = struct.unpack_from("<H", data, 6)[0] - 4
    struct.pack_into("<I", data, crc_at, zlib.crc32(bytes(data[:crc_at])))
    return bytes(data)


def test_forged_geometry_is_refused(encoded):
    """A header with a correct CRC but impossible sizes."""
    err = _error(forge(encoded.data, 32, "I", 99))  # y_shape height
    assert err.field == "y_shape" and err.offset == 32


def test_forged_platform_is_refused(encoded):
    """A platform record that is not deflated JSON, behind a correct header CRC."""
    data = encoded.data
    size = struct.unpack_from("<H", data, 76)[0]
    start = struct.unpack_from("<H", data, 6)[0] - 4 - size
    garbage = data[:start] + bytes(size) + data[start + size :]
    err = _error(forge(garbage, 0, "4s", b"MBIC"))
    assert err.field == "platform" and err.offset == start, str(err)


def test_other_weights_are_refused(encoded):
    other = mambaic.random_model(1, **TINY)
    with pytest.raises(WeightsMismatchError, match=r"x.mic: encoded with other model weights \(fingerprint"):
        decode_image(other, encoded.data, "x.mic")


def test_foreign_files(tmp_path):
    for blob in (b"", b"MBIC", bytes(range(256)) * 4, b"%PDF-1.7\n" + b"x" * 200):
        with pytest.raises(MicFormatError):
            MicFile.from_bytes(blob, "f")
