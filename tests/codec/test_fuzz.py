"""Fuzzing the decoder with hypothesis, seeded with real .mic files of real photographs.

Every mutated file must end in the documented errors, or, where the change leaves what the
decoder reads intact (an informative field, a byte written with its own value), in the exact
original image; never another exception, a hang or an allocation the header asked for. The
mutations: bit flips, truncation, appended, overwritten, inserted and deleted bytes, foreign
files, and forged header fields behind a recomputed header CRC (lengths that lie, huge sizes,
wrong magic and version), string lengths shifted between parts (both CRCs intact: bytes that do
reach the entropy decoder). MAMBAIC_FUZZ_EXAMPLES sets the number of cases per test (CI: the
default); `python tests/codec/fuzz_atheris.py` runs the coverage-guided campaign.
"""

import os
import struct
import time
import warnings
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mambaic
from mambaic.codec import (
    ImageTooLargeError,
    LatentMismatchError,
    MicFile,
    MicFormatError,
    ModelMismatchError,
    decode_image,
    encode_image,
)
from mambaic.codec.container import _FIXED

from .conftest import TINY, photo

DOCUMENTED = (MicFormatError, ModelMismatchError, LatentMismatchError, ImageTooLargeError)
EXAMPLES = int(os.environ.get("MAMBAIC_FUZZ_EXAMPLES", "200"))  # whole decodes; the parser gets 15 times more
SECONDS_PER_CASE = 60  # a hang, not a slow case: a decode of these tiny files takes about a second

# (field, offset, struct format) of the version 2 fixed header
FIELDS, _at = [], 0
for _name, _fmt in _FIXED[2]:
    FIELDS.append((_name, _at, _fmt))
    _at += struct.calcsize("<" + _fmt)


@pytest.fixture(scope="module")
def seeds(tiny):
    """(file bytes, decoded x_hat) of real photographs: sides that are not multiples of 128, 1x1."""
    out = []
    for name, h, w, top, left in (("astronaut", 41, 57, 100, 200), ("coffee", 100, 120, 0, 300), ("chelsea", 1, 1, 50, 50)):
        data = encode_image(tiny, photo(name, h, w, top, left)).data
        out.append((data, decode_image(tiny, data, "seed.mic")[0]))
    return out


def header_crc_at(data: bytes) -> int:
    return struct.unpack_from("<H", data, 6)[0] - 4


def with_header_crc(data: bytearray) -> bytes:
    """``data`` with its header CRC recomputed (where the header size field still points inside)."""
    crc_at = header_crc_at(data)
    if 0 <= crc_at <= len(data) - 4:
        struct.pack_into("<I", data, crc_at, zlib.crc32(bytes(data[:crc_at])))
    return bytes(data)


def _extreme_or_random(draw, fmt: str):
    """A value for one struct code: a boundary (0, 1, max - 1, max) or anything in range."""
    if fmt.endswith("s"):
        return draw(st.binary(min_size=int(fmt[:-1]), max_size=int(fmt[:-1])))
    top = 2 ** (8 * struct.calcsize("<" + fmt)) - 1
    return draw(st.one_of(st.sampled_from([0, 1, top - 1, top]), st.integers(0, top)))


@st.composite
def mutations(draw, n_seeds: int):
    """(seed index, description, mutate(data) -> bytes)."""
    i = draw(st.integers(0, n_seeds - 1))
    kind = draw(st.sampled_from(["flip", "truncate", "append", "overwrite", "insert", "delete", "forge", "lengths",
                                 "foreign", "splice"]))  # fmt: skip
    if kind == "flip":
        bits = draw(st.lists(st.integers(0, 2**20), min_size=1, max_size=8))

        def mutate(d):
            d = bytearray(d)
            for b in bits:
                d[(b // 8) % len(d)] ^= 1 << (b % 8)
            return bytes(d)

        return i, f"flip bits {bits}", mutate
    if kind == "truncate":
        frac = draw(st.floats(0, 1, exclude_max=True))
        return i, f"truncate at {frac:.4f}", lambda d: d[: int(len(d) * frac)]
    if kind == "append":
        tail = draw(st.binary(min_size=1, max_size=64))
        return i, f"append {tail!r}", lambda d: d + tail
    if kind in ("overwrite", "insert", "delete"):
        frac, blob = draw(st.floats(0, 1, exclude_max=True)), draw(st.binary(min_size=1, max_size=16))

        def mutate(d):
            at = int(len(d) * frac)
            if kind == "overwrite":
                return d[:at] + blob + d[at + len(blob) :]
            if kind == "insert":
                return d[:at] + blob + d[at:]
            return d[:at] + d[at + len(blob) :]

        return i, f"{kind} {blob!r} at {frac:.4f}", mutate
    if kind == "forge":
        name, offset, fmt = draw(st.sampled_from(FIELDS))
        codes = [fmt] if fmt.endswith("s") else list(fmt.lstrip("0123456789")) * int(fmt[:-1] or 1)
        values = [_extreme_or_random(draw, c) for c in codes]

        def mutate(d):
            d = bytearray(d)
            struct.pack_into("<" + "".join(codes), d, offset, *values)
            return with_header_crc(d)

        return i, f"forge {name}={values}", mutate
    if kind == "lengths":
        src, dst, amount = draw(st.integers(0, 20)), draw(st.integers(0, 20)), draw(st.integers(1, 64))

        def mutate(d):
            # move bytes from one part's string length to another's: same sum, both CRCs intact
            S = d[21]
            parts = 1 + 2 * S
            a, b = 88 + 4 * (src % parts), 88 + 4 * (dst % parts)
            la, lb = struct.unpack_from("<I", d, a)[0], struct.unpack_from("<I", d, b)[0]
            move = min(amount, la)
            d = bytearray(d)
            struct.pack_into("<I", d, a, la - move)
            struct.pack_into("<I", d, b, struct.unpack_from("<I", d, b)[0] + move if a != b else lb)
            return with_header_crc(d)

        return i, f"lengths {src}->{dst} by {amount}", mutate
    if kind == "foreign":
        blob = draw(st.one_of(st.binary(max_size=300), st.binary(max_size=200).map(lambda b: b"MBIC\x02" + b)))
        return i, f"foreign {blob[:24]!r}", lambda d: blob
    j, cut = draw(st.integers(0, n_seeds - 1)), draw(st.floats(0, 1))
    return i, f"splice with seed {j} at {cut:.3f}", ("splice", j, cut)


def _apply(seeds, i, mutate) -> bytes:
    data = seeds[i][0]
    if isinstance(mutate, tuple):  # this file's start, another's end
        _, j, cut = mutate
        at = int(len(data) * cut)
        return data[:at] + seeds[j][0][at:]
    return mutate(data)


def _decode(tiny, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return decode_image(tiny, data, "fuzz.mic")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                      HealthCheck.too_slow])  # fmt: skip
@given(case=mutations(3))
def test_mutated_files_fail_cleanly_or_decode_exactly(tiny, seeds, case):
    i, what, mutate = case
    data = _apply(seeds, i, mutate)
    t0 = time.perf_counter()
    try:
        x_hat, _ = _decode(tiny, data)
    except DOCUMENTED as exc:
        assert str(exc).startswith("fuzz.mic"), f"{what}: the error does not name the file: {exc}"
        outcome = "error"
    else:
        # decoded: the latent checksums passed, so the symbols are a seed's (its strings may be
        # cut differently: a byte moved across a boundary can leave the symbols as they were) and
        # the image must be that seed's, bit for bit
        assert any(x_hat.shape == img.shape and torch.equal(x_hat, img) for _, img in seeds), (
            f"{what}: decoded to an image that is no seed's")
        outcome = "image"
    assert time.perf_counter() - t0 < SECONDS_PER_CASE, f"{what}: {outcome} after {time.perf_counter() - t0:.1f} s"


@settings(max_examples=EXAMPLES * 15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=mutations(3))
def test_the_parser_alone_never_fails_otherwise(seeds, case):
    """Many more cases through the container parser only (microseconds each)."""
    i, what, mutate = case
    data = _apply(seeds, i, mutate)
    try:
        mic = MicFile.from_bytes(data, "fuzz.mic")
    except MicFormatError:
        return
    # parsed: the payload is a seed's, byte for byte (both CRCs passed); only its cut into strings
    # may differ (lengths moved), which the latent checksums catch at decode
    payloads = [b"".join(MicFile.from_bytes(d).strings()) for d, _ in seeds]
    assert b"".join(mic.strings()) in payloads, what


def test_huge_declared_sizes_are_refused_before_allocation(tiny, seeds):
    """A forged 60000 x 60000 image with a consistent header: refused by the size limit."""
    data = bytearray(seeds[0][0])
    side, pad = 60000, (-60000) % 128
    struct.pack_into("<II HH", data, 8, side, side, pad, pad)
    struct.pack_into("<II II", data, 32, (side + pad) // 16, (side + pad) // 16, (side + pad) // 64, (side + pad) // 64)
    forged = with_header_crc(data)
    MicFile.from_bytes(forged, "f.mic")  # a well-formed header
    with pytest.raises(ImageTooLargeError, match=r"f.mic: declares a 60000x60000 image .* above the limit of 67,108,864"):
        decode_image(tiny, forged, "f.mic")
    before = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    with pytest.raises(ImageTooLargeError):
        decode_image(tiny, forged, "f.mic", max_pixels=10**6)
    assert (torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0) == before


def test_model_sizes_beyond_limits_are_refused(seeds):
    for field, offset, fmt, value in (("N", 22, "H", 65535), ("M", 24, "H", 0), ("depths", 26, "4B", (2, 2, 200, 2)),
                                      ("z_channels", 30, "H", 5000), ("num_slices", 21, "B", 200)):  # fmt: skip
        data = bytearray(seeds[0][0])
        if field == "num_slices":
            continue  # changes the header's size: covered by the fuzzing above
        struct.pack_into("<" + fmt, data, offset, *(value if isinstance(value, tuple) else (value,)))
        with pytest.raises(MicFormatError) as info:
            MicFile.from_bytes(with_header_crc(data), "f.mic")
        assert info.value.field == field, str(info.value)


def test_model_from_a_forged_header_is_never_built(tmp_path, seeds, capsys):
    """`mambaic decompress --random-init` builds its model from the header: a forged size is
    refused first, with a one-line error."""
    from mambaic.cli import decompress

    data = bytearray(seeds[0][0])
    struct.pack_into("<H", data, 22, 60000)  # N
    path = tmp_path / "forged.mic"
    path.write_bytes(with_header_crc(data))
    code = decompress.main([str(path), str(tmp_path / "out.png"), "--random-init"])
    err = capsys.readouterr().err
    assert code == 1 and "N at byte 22: 60000 is outside 1..1024" in err and "Traceback" not in err
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("max_pixels, ok", [(128 * 128, True), (128 * 128 - 1, False)])
def test_cli_max_pixels(tmp_path, seeds, capsys, max_pixels, ok):
    from mambaic.cli import decompress

    path = tmp_path / "a.mic"
    path.write_bytes(seeds[0][0])  # 57x41, coded as 128x128
    seed_args = ["--random-init", "--seed", "0", "--N", "8", "--M", "20", "--depths", "1,1,1,1", "--z-channels", "8"]
    code = decompress.main([str(path), str(tmp_path / "a.png"), "--max-pixels", str(max_pixels), *seed_args])
    err = capsys.readouterr().err
    assert (code == 0) == ok, err
    if not ok:
        assert "above the limit of 16,383 pixels" in err and "--max-pixels" in err
