"""The ``.mic`` container: one MambaIC-coded image in a file.

All integers little-endian. Offsets in bytes from the start of the file (S = num_slices)::

    offset  size  field            meaning
    0       4     magic            b"MBIC"
    4       1     version          1
    5       1     flags            0 (reserved)
    6       2     header_size      bytes before the payload: 80 + 4 * (1 + 2S) + 4
    8       4     height           original image height (pixels)
    12      4     width            original image width
    16      2     pad_bottom       rows added below the image before coding
    18      2     pad_right        columns added on its right
    20      1     padding          1 = replicate (the last row / column repeated)
    21      1     num_slices       S
    22      2     N                model width (informative: the fingerprint decides)
    24      2     M                latent channels
    26      4     depths           VSS blocks per stage, 4 x u8
    30      2     z_channels       hyper-latent channels
    32      8     y_shape          latent height, width (u32 each) = padded size / 16
    40      8     z_shape          hyper-latent height, width = y_shape / 4
    48      16    fingerprint      first 16 bytes of SHA-256 of the model weights
    64      8     payload_size     bytes after the header
    72      4     payload_crc32    CRC32 of the payload
    76      4     reserved         0
    80      4(1+2S) string_lengths  z, then per slice: anchor, non-anchor
    ...     4     header_crc32     CRC32 of every header byte before this field

    payload: z string, then per slice the anchor string and the non-anchor string, back to back.

Reading checks, in order: magic, version, header size, header CRC, the consistency of sizes and
shapes, the file size against the header, the payload CRC. Each failure is a
:class:`MicFormatError` naming the file, the field and its byte offset; no byte of a damaged
file reaches the entropy decoder.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from mambaic.models import IMAGE_MULTIPLE

MAGIC = b"MBIC"
VERSION = 1
PADDING_REPLICATE = 1
_FIXED = (  # (field, struct format) of the fixed part, in file order
    ("magic", "4s"),
    ("version", "B"),
    ("flags", "B"),
    ("header_size", "H"),
    ("height", "I"),
    ("width", "I"),
    ("pad_bottom", "H"),
    ("pad_right", "H"),
    ("padding", "B"),
    ("num_slices", "B"),
    ("N", "H"),
    ("M", "H"),
    ("depths", "4B"),
    ("z_channels", "H"),
    ("y_shape", "2I"),
    ("z_shape", "2I"),
    ("fingerprint", "16s"),
    ("payload_size", "Q"),
    ("payload_crc32", "I"),
    ("reserved", "I"),
)
FIXED_SIZE = struct.calcsize("<" + "".join(f for _, f in _FIXED))  # 80


def header_size(num_slices: int) -> int:
    return FIXED_SIZE + 4 * (1 + 2 * num_slices) + 4


class MicFormatError(ValueError):
    """A .mic file that cannot be decoded: names the file, the field and the byte offset."""

    def __init__(self, source: str, field: str, offset: int, detail: str):
        self.source, self.field, self.offset = source, field, offset
        super().__init__(f"{source}: {field} at byte {offset}: {detail}")


@dataclass
class MicFile:
    """The content of a .mic file. ``slices`` holds (anchor string, non-anchor string) per slice."""

    height: int
    width: int
    pad_bottom: int
    pad_right: int
    N: int
    M: int
    depths: tuple[int, int, int, int]
    z_channels: int
    y_shape: tuple[int, int]
    z_shape: tuple[int, int]
    fingerprint: bytes
    z_string: bytes
    slices: list[tuple[bytes, bytes]]

    @property
    def num_slices(self) -> int:
        return len(self.slices)

    def strings(self) -> list[bytes]:
        """All entropy-coded strings in payload order."""
        return [self.z_string] + [s for pair in self.slices for s in pair]

    def to_bytes(self) -> bytes:
        strings = self.strings()
        payload = b"".join(strings)
        values = dict(
            magic=MAGIC, version=VERSION, flags=0, header_size=header_size(self.num_slices),
            height=self.height, width=self.width, pad_bottom=self.pad_bottom, pad_right=self.pad_right,
            padding=PADDING_REPLICATE, num_slices=self.num_slices, N=self.N, M=self.M, depths=self.depths,
            z_channels=self.z_channels, y_shape=self.y_shape, z_shape=self.z_shape,
            fingerprint=self.fingerprint, payload_size=len(payload),
            payload_crc32=zlib.crc32(payload), reserved=0,
        )  # fmt: skip
        head = b"".join(
            struct.pack("<" + fmt, *(values[name] if isinstance(values[name], tuple) else (values[name],)))
            for name, fmt in _FIXED
        )
        head += struct.pack(f"<{len(strings)}I", *map(len, strings))
        head += struct.pack("<I", zlib.crc32(head))
        return head + payload

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> "MicFile":
        return _Reader(data, source).read()


class _Reader:
    """Parses a .mic file field by field, keeping the offset for error messages."""

    def __init__(self, data: bytes, source: str):
        self.data, self.source, self.offset = bytes(data), source, 0

    def fail(self, field: str, detail: str, offset: int | None = None):
        raise MicFormatError(self.source, field, self.offset if offset is None else offset, detail)

    def take(self, field: str, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.offset + size > len(self.data):
            self.fail(field, f"the file ends at byte {len(self.data)}, {size} bytes needed (truncated file?)")
        values = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += size
        return values if len(values) > 1 else values[0]

    def read(self) -> MicFile:
        h, at = {}, {}
        for name, fmt in _FIXED:
            at[name] = self.offset
            h[name] = self.take(name, fmt)
            if name == "magic" and h[name] != MAGIC:
                self.fail("magic", f"found {h[name]!r}, expected {MAGIC!r}: not a .mic file", 0)
            if name == "version" and h[name] != VERSION:
                self.fail("version", f"format version {h[name]} is not supported (this mambaic reads {VERSION})", 4)
        S = h["num_slices"]
        if h["header_size"] != header_size(S):
            self.fail("header_size", f"{h['header_size']} does not fit num_slices={S} (expected {header_size(S)})", 6)
        at["string_lengths"] = self.offset
        lengths = self.take("string_lengths", f"{1 + 2 * S}I")
        lengths = lengths if isinstance(lengths, tuple) else (lengths,)
        crc_at = self.offset
        stored = self.take("header_crc32", "I")
        if stored != zlib.crc32(self.data[:crc_at]):
            self.fail(
                "header_crc32",
                f"stored 0x{stored:08x}, computed 0x{zlib.crc32(self.data[:crc_at]):08x}: the header is corrupt",
                crc_at,
            )
        self._check_geometry(h, at, lengths)
        end = len(self.data)
        if h["header_size"] + h["payload_size"] != end:
            what = "is truncated" if end < h["header_size"] + h["payload_size"] else "has trailing bytes"
            self.fail(
                "payload_size",
                f"the header promises {h['payload_size']} payload bytes from byte {h['header_size']}, "
                f"but the file has {end - h['header_size']}: the file {what}",
                at["payload_size"],
            )
        payload = self.data[h["header_size"] :]
        if zlib.crc32(payload) != h["payload_crc32"]:
            self.fail(
                "payload_crc32",
                f"stored 0x{h['payload_crc32']:08x}, computed 0x{zlib.crc32(payload):08x} over bytes "
                f"{h['header_size']}..{end - 1}: the payload is corrupt",
                at["payload_crc32"],
            )
        strings, pos = [], 0
        for n in lengths:
            strings.append(payload[pos : pos + n])
            pos += n
        return MicFile(
            height=h["height"], width=h["width"], pad_bottom=h["pad_bottom"], pad_right=h["pad_right"],
            N=h["N"], M=h["M"], depths=tuple(h["depths"]), z_channels=h["z_channels"],
            y_shape=tuple(h["y_shape"]), z_shape=tuple(h["z_shape"]), fingerprint=h["fingerprint"],
            z_string=strings[0], slices=[(strings[1 + 2 * i], strings[2 + 2 * i]) for i in range(S)],
        )  # fmt: skip

    def _check_geometry(self, h: dict, at: dict, lengths: tuple) -> None:
        """Sizes that the encoder always writes consistently; a mismatch means a forged or buggy file."""
        if h["height"] < 1 or h["width"] < 1:
            self.fail("height", f"image size {h['height']}x{h['width']} must be at least 1x1", at["height"])
        if h["padding"] != PADDING_REPLICATE:
            self.fail("padding", f"unknown padding mode {h['padding']} (1 = replicate)", at["padding"])
        if h["num_slices"] < 1:
            self.fail("num_slices", "must be at least 1", at["num_slices"])
        for side, pad in (("height", "pad_bottom"), ("width", "pad_right")):
            if (h[side] + h[pad]) % IMAGE_MULTIPLE or h[pad] >= IMAGE_MULTIPLE:
                detail = f"{h[pad]} does not pad {side} {h[side]} to the next multiple of {IMAGE_MULTIPLE}"
                self.fail(pad, detail, at[pad])
        padded = (h["height"] + h["pad_bottom"], h["width"] + h["pad_right"])
        if tuple(h["y_shape"]) != (padded[0] // 16, padded[1] // 16):
            self.fail("y_shape", f"{h['y_shape']} is not the padded size {padded} / 16", at["y_shape"])
        if tuple(h["z_shape"]) != (padded[0] // 64, padded[1] // 64):
            self.fail("z_shape", f"{h['z_shape']} is not y_shape / 4", at["z_shape"])
        if sum(lengths) != h["payload_size"]:
            self.fail(
                "string_lengths",
                f"the strings add up to {sum(lengths)} bytes, payload_size says {h['payload_size']}",
                at["string_lengths"],
            )
