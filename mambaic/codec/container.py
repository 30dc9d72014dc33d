"""The ``.mic`` container: one MambaIC-coded image in a file.

All integers little-endian. Offsets in bytes from the start of the file (S = num_slices,
P = 1 + 2S parts: z, then per slice the anchors and the non-anchors)::

    offset  size  field               meaning
    0       4     magic               b"MBIC"
    4       1     version             2 (1: the first format, read for compatibility)
    5       1     flags               0 (reserved)
    6       2     header_size         bytes before the payload: 88 + 8P + platform_size + 4
    8       4     height              original image height (pixels)
    12      4     width               original image width
    16      2     pad_bottom          rows added below the image before coding
    18      2     pad_right           columns added on its right
    20      1     padding             1 = replicate (the last row / column repeated)
    21      1     num_slices          S
    22      2     N                   model width (informative: the fingerprint decides)
    24      2     M                   latent channels
    26      4     depths              VSS blocks per stage, 4 x u8
    30      2     z_channels          hyper-latent channels
    32      8     y_shape             latent height, width (u32 each) = padded size / 16
    40      8     z_shape             hyper-latent height, width = y_shape / 4
    48      16    fingerprint         first 16 bytes of SHA-256 of the model weights
    64      8     payload_size        bytes after the header
    72      4     payload_crc32       CRC32 of the payload
    76      2     platform_size       bytes of the deflated platform record
    78      2     reserved            0
    80      8     tables_fingerprint  first 8 bytes of SHA-256 of the entropy coder's tables
    88      4P    string_lengths      z, then per slice: anchor, non-anchor
    88+4P   4P    latent_checksums    per part, CRC32 of its int32 symbols (little-endian, coding order)
    88+8P   ...   platform            the encoder's platform (codec/platform.py): a JSON object,
                                      raw-deflated with the preset dictionary PLATFORM_DICTIONARY
    ...     4     header_crc32        CRC32 of every header byte before this field

    payload: z string, then per slice the anchor string and the non-anchor string, back to back.

Version 1 has the same first 76 bytes, then 4 reserved bytes, the string lengths and the header
CRC (header_size 80 + 4P + 4): no tables fingerprint, no checksums, no platform.

Reading checks, in order: magic, version, header size, header CRC, the consistency of sizes and
shapes, the file size against the header, the payload CRC. Each failure is a
:class:`MicFormatError` naming the file, the field and its byte offset; no byte of a damaged
file reaches the entropy decoder.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field

from mambaic.models import IMAGE_MULTIPLE

MAGIC = b"MBIC"
VERSION = 2  # what this mambaic writes
READABLE_VERSIONS = (1, 2)
PADDING_REPLICATE = 1
MAX_PLATFORM_BYTES = 4096  # the platform JSON is about 300 bytes; more means a forged file
CHECKSUM_BYTES = 4
# Model sizes a file may declare: far above the official model (N 128, M 320, depths 2,2,9,2, z 192)
# and any variant we know of, far below what would make a decoder built from the header (demos,
# `--random-init`) allocate gigabytes of weights for a forged file.
MAX_MODEL = {"N": 1024, "M": 2048, "z_channels": 1024, "depth": 64}
# The platform record is JSON deflated against this preset dictionary (zlib's zdict): the usual
# keys and values then cost a few dozen bytes instead of about 300, which matters at low rates
# (300 bytes are 0.6% of a Kodak image at 0.1 bpp). Fixed for version 2: a file's record decodes
# only with the dictionary it was written with.
PLATFORM_DICTIONARY = (
    b'"AMD EPYC"Intel(R) Xeon(R)"NVIDIA A100-SXM4-80GB"NVIDIA H100 80GB HBM3"NVIDIA GeForce RTX 4090"'
    b'"bf16"fp16"tf32"vmamba"cross_merge":"cross_scan":"selective_scan":"cuda":"cpu":"torch":"triton"'
    b'{"backends":{"ss2d_core":"triton","window_attention":"triton"},"compressai":"1.2.8",'
    b'"cuda":"13.0","device":"cuda","device_name":"NVIDIA H200","mambaic":"0.2.0","precision":"fp32",'
    b'"threads":16,"torch":"2.11.0+cu130","triton":"3.6.0"}'
)
_COMMON = (  # (field, struct format) of the first 76 bytes, in file order: the same in every version
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
)
_FIXED = {
    1: _COMMON + (("reserved", "I"),),
    2: _COMMON + (("platform_size", "H"), ("reserved", "H"), ("tables_fingerprint", "8s")),
}
FIXED_SIZE = {v: struct.calcsize("<" + "".join(f for _, f in fields)) for v, fields in _FIXED.items()}  # 80, 88


def header_size(num_slices: int, version: int = VERSION, platform_size: int = 0) -> int:
    parts = 1 + 2 * num_slices
    per_part = 4 if version == 1 else 4 + CHECKSUM_BYTES
    return FIXED_SIZE[version] + per_part * parts + platform_size + 4


def part_name(part: int, num_slices: int) -> str:
    """Part 0 is z; parts 1 + 2i and 2 + 2i the anchors and non-anchors of slice i (1-based in words)."""
    if part == 0:
        return "z (the hyper-latent)"
    i, colour = divmod(part - 1, 2)
    return f"slice {i + 1} of {num_slices} ({'non-anchors' if colour else 'anchors'})"


def latent_checksum(symbols) -> bytes:
    """CRC32 of integer symbols (a tensor) as int32 little-endian in their order: 4 bytes."""
    array = symbols.detach().to("cpu").contiguous().numpy().astype("<i4", copy=False)
    return struct.pack("<I", zlib.crc32(array.tobytes()))


def pack_platform(platform: dict) -> bytes:
    """The platform record as stored: compact JSON, raw-deflated with PLATFORM_DICTIONARY."""
    text = json.dumps(platform, sort_keys=True, separators=(",", ":")).encode()
    if len(text) > MAX_PLATFORM_BYTES:
        raise ValueError(f"the platform record is {len(text)} bytes of JSON, at most {MAX_PLATFORM_BYTES}")
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15, zdict=PLATFORM_DICTIONARY)
    return deflate.compress(text) + deflate.flush()


def unpack_platform(raw: bytes) -> dict:
    """Inverse of :func:`pack_platform`; ValueError if it is not such a record (bounded output)."""
    inflate = zlib.decompressobj(-15, zdict=PLATFORM_DICTIONARY)
    try:
        text = inflate.decompress(raw, MAX_PLATFORM_BYTES + 1)
    except zlib.error as exc:
        raise ValueError(f"not a deflated record ({exc})") from None
    if len(text) > MAX_PLATFORM_BYTES or inflate.unconsumed_tail:
        raise ValueError(f"inflates to more than {MAX_PLATFORM_BYTES} bytes")
    if not inflate.eof or inflate.unused_data:
        raise ValueError("the deflated record is truncated or followed by other bytes")
    try:
        value = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"not a UTF-8 JSON record ({exc})") from None
    if not isinstance(value, dict) or not isinstance(value.get("backends", {}), dict):
        raise ValueError("not a JSON object with a 'backends' object")
    return value


class MicFormatError(ValueError):
    """A .mic file that cannot be decoded: names the file, the field and the byte offset."""

    def __init__(self, source: str, field: str, offset: int, detail: str):
        self.source, self.field, self.offset = source, field, offset
        super().__init__(f"{source}: {field} at byte {offset}: {detail}")


@dataclass
class MicFile:
    """The content of a .mic file. ``slices`` holds (anchor string, non-anchor string) per slice.

    Version 2 adds ``tables_fingerprint``, ``checksums`` (one per part, in string order) and
    ``platform`` (the encoder's, a dict); they are None in a version 1 file.
    """

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
    tables_fingerprint: bytes | None = None
    checksums: list[bytes] | None = None
    platform: dict | None = None
    version: int = field(default=VERSION)

    @property
    def num_slices(self) -> int:
        return len(self.slices)

    @property
    def verifiable(self) -> bool:
        """Whether the file carries latent checksums (version 2)."""
        return self.checksums is not None

    def strings(self) -> list[bytes]:
        """All entropy-coded strings in payload order."""
        return [self.z_string] + [s for pair in self.slices for s in pair]

    def to_bytes(self) -> bytes:
        """The file, in the current version (only version 2 is written)."""
        parts = 1 + 2 * self.num_slices
        if self.tables_fingerprint is None or self.checksums is None or self.platform is None:
            raise ValueError("MicFile.to_bytes: version 2 needs tables_fingerprint, checksums and platform")
        if len(self.checksums) != parts or any(len(c) != CHECKSUM_BYTES for c in self.checksums):
            raise ValueError(f"MicFile.to_bytes: need {parts} checksums of {CHECKSUM_BYTES} bytes")
        platform = pack_platform(self.platform)
        strings = self.strings()
        payload = b"".join(strings)
        values = dict(
            magic=MAGIC, version=VERSION, flags=0, header_size=header_size(self.num_slices, VERSION, len(platform)),
            height=self.height, width=self.width, pad_bottom=self.pad_bottom, pad_right=self.pad_right,
            padding=PADDING_REPLICATE, num_slices=self.num_slices, N=self.N, M=self.M, depths=self.depths,
            z_channels=self.z_channels, y_shape=self.y_shape, z_shape=self.z_shape,
            fingerprint=self.fingerprint, payload_size=len(payload), payload_crc32=zlib.crc32(payload),
            platform_size=len(platform), reserved=0, tables_fingerprint=self.tables_fingerprint,
        )  # fmt: skip
        head = b"".join(
            struct.pack("<" + fmt, *(values[name] if isinstance(values[name], tuple) else (values[name],)))
            for name, fmt in _FIXED[VERSION]
        )
        head += struct.pack(f"<{len(strings)}I", *map(len, strings))
        head += b"".join(self.checksums) + platform
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

    def take_bytes(self, field: str, size: int) -> bytes:
        if self.offset + size > len(self.data):
            self.fail(field, f"the file ends at byte {len(self.data)}, {size} bytes needed (truncated file?)")
        self.offset += size
        return self.data[self.offset - size : self.offset]

    def read(self) -> MicFile:
        h, at = {}, {}
        version = None
        fields = list(_COMMON)
        while fields:
            name, fmt = fields.pop(0)
            at[name] = self.offset
            h[name] = self.take(name, fmt)
            if name == "magic" and h[name] != MAGIC:
                self.fail("magic", f"found {h[name]!r}, expected {MAGIC!r}: not a .mic file", 0)
            if name == "version":
                version = h[name]
                if version not in READABLE_VERSIONS:
                    self.fail("version", f"format version {version} is not supported (this mambaic reads "
                                         f"{', '.join(map(str, READABLE_VERSIONS))})", 4)  # fmt: skip
                fields = list(_FIXED[version][len(at) :])
        S = h["num_slices"]
        parts = 1 + 2 * S
        expected = header_size(S, version, h.get("platform_size", 0))
        if h["header_size"] != expected:
            detail = f"{h['header_size']} does not fit num_slices={S}"
            if version == 2:
                detail += f" and platform_size={h['platform_size']}"
            self.fail("header_size", f"{detail} (expected {expected})", 6)
        at["string_lengths"] = self.offset
        lengths = self.take("string_lengths", f"{parts}I")
        lengths = lengths if isinstance(lengths, tuple) else (lengths,)
        checksums = platform = None
        if version == 2:
            at["latent_checksums"] = self.offset
            blob = self.take_bytes("latent_checksums", CHECKSUM_BYTES * parts)
            checksums = [blob[i : i + CHECKSUM_BYTES] for i in range(0, len(blob), CHECKSUM_BYTES)]
            at["platform"] = self.offset
            platform_bytes = self.take_bytes("platform", h["platform_size"])
        crc_at = self.offset
        stored = self.take("header_crc32", "I")
        if stored != zlib.crc32(self.data[:crc_at]):
            self.fail(
                "header_crc32",
                f"stored 0x{stored:08x}, computed 0x{zlib.crc32(self.data[:crc_at]):08x}: the header is corrupt",
                crc_at,
            )
        self._check_geometry(h, at, lengths)
        if version == 2:
            platform = self._platform(platform_bytes, at["platform"])
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
            tables_fingerprint=h.get("tables_fingerprint"), checksums=checksums, platform=platform,
            version=version,
        )  # fmt: skip

    def _platform(self, raw: bytes, offset: int) -> dict:
        """The encoder's platform record (deflated JSON, at most MAX_PLATFORM_BYTES inflated)."""
        try:
            return unpack_platform(raw)
        except ValueError as exc:
            self.fail("platform", str(exc), offset)

    def _check_geometry(self, h: dict, at: dict, lengths: tuple) -> None:
        """Sizes that the encoder always writes consistently; a mismatch means a forged or buggy file."""
        if h["height"] < 1 or h["width"] < 1:
            self.fail("height", f"image size {h['height']}x{h['width']} must be at least 1x1", at["height"])
        if h["padding"] != PADDING_REPLICATE:
            self.fail("padding", f"unknown padding mode {h['padding']} (1 = replicate)", at["padding"])
        if h["num_slices"] < 1:
            self.fail("num_slices", "must be at least 1", at["num_slices"])
        for name in ("N", "M", "z_channels"):
            if not 1 <= h[name] <= MAX_MODEL[name]:
                self.fail(name, f"{h[name]} is outside 1..{MAX_MODEL[name]} (a forged or foreign file)", at[name])
        if h["num_slices"] > h["M"]:
            self.fail("num_slices", f"{h['num_slices']} slices of M={h['M']} latent channels", at["num_slices"])
        if not all(1 <= d <= MAX_MODEL["depth"] for d in h["depths"]):
            self.fail("depths", f"{h['depths']}: each must be in 1..{MAX_MODEL['depth']}", at["depths"])
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
