"""The C++ rANS coder (mambaic/models/csrc/rans.cpp, mambaic/models/rans.py) against CompressAI's.

Its strings must be byte for byte those of CompressAI's ``RansEncoder``, the coder every
existing .mic file and the official bitstreams were written with. CompressAI's coder runs only
where it is defined: at least 4 symbols (it writes past its buffer for 0 or 1) and raw bypass
values below 2^28 (beyond, its int32 arithmetic overflows and its encoder loops forever). Outside
that, :func:`reference_encode`, the format written out in Python integers, is the oracle.
"""

import struct
import warnings

import pytest
import torch
from compressai import ans
from compressai.entropy_models import EntropyBottleneck, GaussianConditional

import mambaic
from mambaic.codec import LatentMismatchError, MicFile, MicFormatError, decode_image, encode_image
from mambaic.models import rans
from mambaic.models.entropy_tables import install


INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
COMPRESSAI_RAW_LIMIT = 2**28  # CompressAI's chunk count loop shifts by 32 bits from here


@pytest.fixture(scope="module")
def ext():
    module = rans._EXTENSION.get()
    if module is None:
        pytest.skip(f"rANS extension not built: {rans._EXTENSION.error}")
    return module


@pytest.fixture(scope="module")
def model_tables():
    """{name: RansTables} of the official-size random model after update(): the Gaussian's 64
    rows of up to 3133 entries, and the factorized prior's 192 rows."""
    model = mambaic.random_model(0)
    model.update()
    return {"gaussian": rans.tables_of(model.gaussian_conditional),
            "bottleneck": rans.tables_of(model.entropy_bottleneck)}


class Tables:
    """Tables given directly (the fields of RansTables that the coder reads)."""

    def __init__(self, cdfs, sizes, offsets):
        self.cdfs, self.sizes, self.offsets = cdfs, sizes, offsets


def random_tables(gen: torch.Generator, rows: int, max_len: int) -> Tables:
    """Random valid CDF rows of random lengths 3..max_len, offsets of both signs."""
    cdfs = torch.zeros(rows, max_len, dtype=torch.int32)
    sizes = torch.randint(3, max_len + 1, (rows,), generator=gen, dtype=torch.int32)
    for r, size in enumerate(sizes.tolist()):
        inner = torch.randperm(2**16 - 1, generator=gen)[: size - 2].sort().values + 1
        cdfs[r, 1 : size - 1] = inner.int()
        cdfs[r, size - 1] = 2**16
    offsets = torch.randint(-3000, 3000, (rows,), generator=gen, dtype=torch.int32)
    return Tables(cdfs, sizes, offsets)


def raw_values(symbols, indexes, t) -> torch.Tensor:
    """Each symbol's raw bypass value (0 when it is coded through its CDF), in int64."""
    value = symbols.long() - t.offsets.long()[indexes.long()]
    max_value = t.sizes.long()[indexes.long()] - 2
    return torch.where(value < 0, -2 * value - 1, torch.where(value >= max_value, 2 * (value - max_value), 0))


def compressai_defined(symbols, indexes, t) -> bool:
    return symbols.numel() >= 4 and int(raw_values(symbols, indexes, t).max()) < COMPRESSAI_RAW_LIMIT


def compressai_encode(symbols, indexes, t) -> bytes:
    assert compressai_defined(symbols, indexes, t)  # its coder would crash or hang
    return ans.RansEncoder().encode_with_indexes(symbols.tolist(), indexes.tolist(), t.cdfs.tolist(),
                                                 t.sizes.tolist(), t.offsets.tolist())  # fmt: skip


def compressai_decode(string, indexes, t) -> list:
    return ans.RansDecoder().decode_with_indexes(string, indexes.tolist(), t.cdfs.tolist(), t.sizes.tolist(),
                                                 t.offsets.tolist())  # fmt: skip


def reference_encode(symbols, indexes, t) -> bytes:
    """The format, step by step, in Python integers (see the top of csrc/rans.cpp)."""
    L = 1 << 31
    steps = []  # in decoding order: ("cdf", start, freq) or ("bits", 4-bit chunk)
    for s, r in zip(symbols.tolist(), indexes.tolist()):
        cdf, m = t.cdfs[r].tolist(), int(t.sizes[r]) - 2
        v = s - int(t.offsets[r])
        coded = v if 0 <= v < m else m
        steps.append(("cdf", cdf[coded], cdf[coded + 1] - cdf[coded]))
        if coded == m:
            raw = -2 * v - 1 if v < 0 else 2 * (v - m)
            n = 0
            while raw >> (4 * n):
                n += 1
            steps += [("bits", 15)] * (n // 15) + [("bits", n % 15)]
            steps += [("bits", (raw >> (4 * j)) & 15) for j in range(n)]
    x, words = L, []
    for step in reversed(steps):  # rANS is a stack
        if step[0] == "cdf":
            _, start, freq = step
            if x >= ((L >> 16) << 32) * freq:
                words.append(x & 0xFFFFFFFF)
                x >>= 32
            x = ((x // freq) << 16) + x % freq + start
        else:
            if x >= 1 << 59:
                words.append(x & 0xFFFFFFFF)
                x >>= 32
            x = (x << 4) | step[1]
    return struct.pack(f"<{2 + len(words)}I", x & 0xFFFFFFFF, x >> 32, *reversed(words))


def symbols_for(case: str, gen: torch.Generator, n: int, t) -> tuple[torch.Tensor, torch.Tensor]:
    """(symbols, indexes) of one kind of case."""
    rows = t.cdfs.shape[0]
    indexes = torch.randint(0, rows, (n,), generator=gen, dtype=torch.int32)
    if case == "realistic":  # what MambaIC codes: small integers, mid-range scales
        indexes = torch.randint(min(10, rows - 1), min(41, rows), (n,), generator=gen, dtype=torch.int32)
        return torch.round(2 * torch.randn(n, generator=gen)).int(), indexes
    if case == "one-row":
        return torch.round(3 * torch.randn(n, generator=gen)).int(), torch.full((n,), rows // 2, dtype=torch.int32)
    if case == "far":  # many escapes of both signs, up to 2^26 beyond the table
        scale = 10.0 ** torch.randint(0, 8, (n,), generator=gen).float()
        return (torch.randn(n, generator=gen) * scale).clamp(-(2**26), 2**26).round().int(), indexes
    if case == "all-escapes":
        sign = torch.randint(0, 2, (n,), generator=gen) * 2 - 1
        return (sign * torch.randint(4000, 2**26, (n,), generator=gen)).int(), indexes
    raise ValueError(case)


CASES = ["realistic", "one-row", "far", "all-escapes"]
SIZES = [4, 5, 7, 64, 1001, 4099]


@pytest.mark.parametrize("table", ["gaussian", "bottleneck", "random"])
@pytest.mark.parametrize("case", CASES)
def test_strings_are_compressais(ext, model_tables, table, case):
    gen = torch.Generator().manual_seed(10 * CASES.index(case) + len(table))
    t = model_tables.get(table) or random_tables(gen, 37, 300)
    for n in SIZES:
        symbols, indexes = symbols_for(case, gen, n, t)
        string = ext.encode(symbols, indexes, t.cdfs, t.sizes, t.offsets)
        want = compressai_encode(symbols, indexes, t)
        assert string == want, f"{table}/{case} n={n}: {len(string)} bytes, CompressAI's {len(want)}"
        decoded = ext.decode(string, indexes, t.cdfs, t.sizes, t.offsets)
        assert torch.equal(decoded, symbols), f"{table}/{case} n={n}: decode(encode(x)) != x"
        assert decoded.tolist() == compressai_decode(string, indexes, t), f"{table}/{case} n={n}"


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_few_symbols(ext, model_tables, n):
    """Where CompressAI's coder writes past its buffer: the reference is the oracle."""
    gen = torch.Generator().manual_seed(n)
    for table, t in model_tables.items():
        for case in CASES:
            symbols, indexes = symbols_for(case, gen, n, t)
            string = ext.encode(symbols, indexes, t.cdfs, t.sizes, t.offsets)
            assert string == reference_encode(symbols, indexes, t), f"{table}/{case} n={n}"
            assert torch.equal(ext.decode(string, indexes, t.cdfs, t.sizes, t.offsets), symbols)
    assert ext.encode(torch.zeros(0, dtype=torch.int32), torch.zeros(0, dtype=torch.int32), t.cdfs, t.sizes,
                      t.offsets) == struct.pack("<II", 2**31, 0)  # fmt: skip


def test_int32_extremes(ext, model_tables):
    """Any int32 symbol codes and decodes (CompressAI overflows from raw = 2^28 on); below
    that bound the strings are CompressAI's."""
    gen = torch.Generator().manual_seed(1)
    extremes = [INT32_MIN, INT32_MIN + 1, -(2**30), -(2**27) - 5, -(2**27) + 5, 0, 2**27 - 5, 2**27 + 5, 2**30,
                INT32_MAX - 1, INT32_MAX]  # fmt: skip
    for table, t in [*model_tables.items(), ("random", random_tables(gen, 9, 50))]:
        offsets = t.offsets.clone()
        offsets[0], offsets[-1] = INT32_MAX - 100, INT32_MIN + 100  # value = symbol - offset near +-2^32
        t = Tables(t.cdfs, t.sizes, offsets)
        for _ in range(20):
            n = int(torch.randint(4, 40, (1,), generator=gen))
            symbols = torch.tensor(extremes, dtype=torch.int32)[torch.randint(0, len(extremes), (n,), generator=gen)]
            indexes = torch.randint(0, t.cdfs.shape[0], (n,), generator=gen, dtype=torch.int32)
            string = ext.encode(symbols, indexes, t.cdfs, t.sizes, t.offsets)
            assert string == reference_encode(symbols, indexes, t), table
            assert torch.equal(ext.decode(string, indexes, t.cdfs, t.sizes, t.offsets), symbols), table
            assert int(raw_values(symbols, indexes, t).max()) < 2**33  # so at most 9 chunks
            keep = raw_values(symbols, indexes, t) < COMPRESSAI_RAW_LIMIT
            if int(keep.sum()) >= 4:
                s, i = symbols[keep], indexes[keep]
                assert ext.encode(s, i, t.cdfs, t.sizes, t.offsets) == compressai_encode(s, i, t), table


def test_compressais_strings_decode_as_compressai_decodes_them(ext, model_tables):
    gen = torch.Generator().manual_seed(2)
    t = model_tables["gaussian"]
    for case in CASES:
        symbols, indexes = symbols_for(case, gen, 2000, t)
        string = compressai_encode(symbols, indexes, t)
        assert ext.decode(string, indexes, t.cdfs, t.sizes, t.offsets).tolist() == compressai_decode(string, indexes, t)


# -- hostile strings --------------------------------------------------------------------------------


def decode_or_corrupt(ext, string, indexes, t):
    """The decoded symbols, or None after the documented error."""
    try:
        out = ext.decode(string, indexes, t.cdfs, t.sizes, t.offsets)
    except ValueError as exc:
        assert isinstance(exc, ext.CorruptStringError), repr(exc)
        assert str(exc).startswith("corrupt entropy-coded string: "), str(exc)
        return None
    assert out.shape == indexes.shape and out.dtype == torch.int32
    return out


def test_hostile_strings(ext, model_tables):
    """Random, truncated, extended, empty and bit-flipped strings: a decode or the documented
    ValueError, never a crash or a hang (all of them take well under a second)."""
    gen = torch.Generator().manual_seed(3)
    for table, t in model_tables.items():
        for case in ("realistic", "far"):
            symbols, indexes = symbols_for(case, gen, 3000, t)
            string = ext.encode(symbols, indexes, t.cdfs, t.sizes, t.offsets)
            for k in (1, 2, 3, 4, 5, 8, 100, len(string) - 1, len(string)):
                decode_or_corrupt(ext, string[:-k], indexes, t)
            for k in (4, 5, 8, 100, len(string)):  # an encoder's string is read exactly to its end
                assert decode_or_corrupt(ext, string[:-k], indexes, t) is None, f"{table}/{case}: cut {k} bytes"
            for tail in (b"\x00", b"\x00" * 4, b"\xff" * 7, bytes(range(64))):
                assert decode_or_corrupt(ext, string + tail, indexes, t) is None, f"{table}/{case}: + {tail!r}"
            for _ in range(30):
                flipped = bytearray(string)
                at = int(torch.randint(0, len(string) * 8, (1,), generator=gen))
                flipped[at // 8] ^= 1 << (at % 8)
                decode_or_corrupt(ext, bytes(flipped), indexes, t)
            for size in (0, 1, 7, 8, 9, 64, 4096, 100_000):
                noise = bytes(torch.randint(0, 256, (size,), generator=gen, dtype=torch.uint8).tolist())
                decode_or_corrupt(ext, noise, indexes, t)
                decode_or_corrupt(ext, noise, indexes[:0], t)


def test_corrupt_string_messages(ext, model_tables):
    t = model_tables["gaussian"]
    indexes = torch.full((10,), 20, dtype=torch.int32)
    string = ext.encode(torch.zeros(10, dtype=torch.int32), indexes, t.cdfs, t.sizes, t.offsets)
    with pytest.raises(ValueError, match=r"^corrupt entropy-coded string: the decoder reads past its end"):
        ext.decode(b"", indexes, t.cdfs, t.sizes, t.offsets)
    with pytest.raises(ValueError, match=r"first 8 bytes are not an encoder's final state"):
        ext.decode(b"\x00" * 8, indexes, t.cdfs, t.sizes, t.offsets)
    unread = rf"4 bytes remain unread after its 10 symbols \(a string of {len(string) + 4} bytes\)"
    with pytest.raises(ValueError, match=unread):
        ext.decode(string + b"\x00" * 4, indexes, t.cdfs, t.sizes, t.offsets)
    # A state that decodes the escape value 1 of the row (0, 30000, 65536), then a bypass chunk
    # count of 15: after the escape, x = 35536 * (x >> 16) + 15, and (x >> 16) = 2^40 makes its
    # low 4 bits 15 with no word to read.
    one = Tables(torch.tensor([[0, 30000, 2**16]], dtype=torch.int32), torch.tensor([3], dtype=torch.int32),
                 torch.tensor([0], dtype=torch.int32))  # fmt: skip
    state = (1 << 56) | (30000 + 15)
    with pytest.raises(ValueError, match=r"declares at least 15 bypass chunks, more than the 9 that any int32"):
        ext.decode(struct.pack("<Q", state), torch.zeros(1, dtype=torch.int32), one.cdfs, one.sizes, one.offsets)
    with pytest.raises(rans.CorruptStringError) as info:
        rans.decode_symbols(GaussianConditionalWith(t), [string, string[:-4]], torch.full((2, 10), 20), part=7)
    assert info.value.index == 1 and info.value.part == 7


def GaussianConditionalWith(t) -> GaussianConditional:
    """A GaussianConditional whose coder tables are ``t``'s."""
    gc = GaussianConditional(None)
    gc._quantized_cdf, gc._cdf_length, gc._offset = t.cdfs.clone(), t.sizes.clone(), t.offsets.clone()
    return gc


# -- argument checks ----------------------------------------------------------------------------------


def test_argument_checks(ext, model_tables):
    t = model_tables["gaussian"]
    s, i = torch.zeros(5, dtype=torch.int32), torch.full((5,), 40, dtype=torch.int32)
    with pytest.raises(TypeError, match=r"rans.encode: symbols must be int32, got Long"):
        ext.encode(s.long(), i, t.cdfs, t.sizes, t.offsets)
    with pytest.raises(ValueError, match=r"rans.encode: symbols must be contiguous"):
        ext.encode(torch.zeros(10, dtype=torch.int32)[::2], i, t.cdfs, t.sizes, t.offsets)
    with pytest.raises(ValueError, match=r"rans.encode: indexes must have the shape of symbols \[5\], got \[4\]"):
        ext.encode(s, i[:4], t.cdfs, t.sizes, t.offsets)
    with pytest.raises(ValueError, match=r"rans.decode: indexes must lie in 0..63 \(one per CDF row\), got 64"):
        ext.decode(b"\x00" * 8, torch.tensor([0, 64], dtype=torch.int32), t.cdfs, t.sizes, t.offsets)
    with pytest.raises(ValueError, match=r"rans.encode: indexes must lie in 0..63 .*, got -1 at position 4"):
        ext.encode(s, torch.tensor([0, 1, 2, 3, -1], dtype=torch.int32), t.cdfs, t.sizes, t.offsets)
    with pytest.raises(ValueError, match=r"rans.encode: cdf_sizes and offsets must have one entry per CDF row"):
        ext.encode(s, i, t.cdfs, t.sizes[:-1], t.offsets)
    with pytest.raises(ValueError, match=r"rans.decode: cdfs must have 2 dimension\(s\)"):
        ext.decode(b"", i, t.cdfs.reshape(-1), t.sizes, t.offsets)
    bad = t.cdfs.clone()
    bad[40, 5] = bad[40, 4]
    with pytest.raises(ValueError, match=r"rans.encode: CDF row 40 must increase strictly, got \d+ then \d+ at entry"):
        ext.encode(s, i, bad, t.sizes, t.offsets)
    sizes = t.sizes.clone()
    sizes[40] = t.cdfs.shape[1] + 1
    with pytest.raises(ValueError, match=r"rans.encode: cdf_sizes\[40\] must lie in 3..3133"):
        ext.encode(s, i, t.cdfs, sizes, t.offsets)
    sizes[40] = 2
    with pytest.raises(ValueError, match=r"cdf_sizes\[40\] must lie in 3"):
        ext.encode(s, i, t.cdfs, sizes, t.offsets)
    with pytest.raises(ValueError, match=r"tables are empty; call update\(\) on the model first"):
        rans.encode_symbols(GaussianConditional(None), s[None], i[None])
    with pytest.raises(TypeError, match=r"strings\[0\] must be bytes, got str"):
        rans.decode_symbols(GaussianConditionalWith(t), ["abc"], i[None])


# -- the Python front: tables, CompressAI's methods, the fallback ----------------------------------------


def test_tables_follow_the_modules_buffers():
    eb = EntropyBottleneck(4)
    eb.update(force=True)
    first = rans.tables_of(eb)
    assert rans.tables_of(eb) is first  # nothing changed: the same tables
    eb.update(force=True)  # new buffers
    second = rans.tables_of(eb)
    assert second is not first and torch.equal(second.cdfs, first.cdfs)
    offsets = second.offsets.clone()
    with torch.no_grad():
        eb._offset -= 1  # changed in place
    third = rans.tables_of(eb)
    assert third is not second and torch.equal(third.offsets, offsets - 1)
    gc = GaussianConditional(None)
    gc.update_scale_table(torch.tensor([0.5, 1.0, 4.0]))
    gc.update()
    x, idx = torch.randn(2, 3, 5, 7) * 3, torch.randint(0, 3, (2, 3, 5, 7), dtype=torch.int32)
    before = rans.compress(gc, x, idx)
    install(gc, {"_quantized_cdf": gc._quantized_cdf[[2, 1, 0]], "_cdf_length": gc._cdf_length[[2, 1, 0]],
                 "_offset": gc._offset[[2, 1, 0]]})  # fmt: skip
    assert rans.compress(gc, x, idx) == gc.compress(x, idx) != before


@pytest.mark.parametrize("means", [False, True])
def test_compress_and_decompress_are_compressais(means):
    gen = torch.Generator().manual_seed(4)
    gc = GaussianConditional(None)
    gc.update_scale_table(torch.exp(torch.linspace(-2, 4, 12)))
    gc.update()
    x = torch.randn(3, 4, 9, 11, generator=gen) * 20
    scales = torch.rand(3, 4, 9, 11, generator=gen) * 30
    mu = torch.randn(3, 4, 9, 11, generator=gen) if means else None
    indexes = gc.build_indexes(scales)
    strings = rans.compress(gc, x, indexes, mu)
    assert strings == gc.compress(x, indexes, mu)
    for dtype in (torch.float, torch.int32):
        got, want = rans.decompress(gc, strings, indexes, dtype, mu), gc.decompress(strings, indexes, dtype, mu)
        assert got.dtype == want.dtype and got.device == want.device and torch.equal(got, want)
    eb = EntropyBottleneck(4)
    eb.update(force=True)
    z = torch.randn(2, 4, 6, 5, generator=gen) * 8
    medians = eb._get_medians().detach().reshape(-1, 1, 1).expand(2, -1, -1, -1)
    z_indexes = eb._build_indexes(z.size())
    assert rans.compress(eb, z, z_indexes, medians) == eb.compress(z)
    assert torch.equal(rans.decompress(eb, eb.compress(z), z_indexes, medians.dtype, medians),
                       eb.decompress(eb.compress(z), z.shape[-2:]))  # fmt: skip


def test_fallback_to_compressai(monkeypatch):
    def no_compiler():
        raise ImportError("error: g++: command not found")

    monkeypatch.setattr(rans, "_EXTENSION", rans._Extension(build=no_compiler))
    gc = GaussianConditional(None)
    gc.update_scale_table(torch.tensor([0.3, 1.0, 5.0]))
    gc.update()
    x, idx = torch.randn(1, 2, 8, 8) * 4, torch.randint(0, 3, (1, 2, 8, 8), dtype=torch.int32)
    with pytest.warns(RuntimeWarning, match=r"could not be compiled \(ImportError: error: g\+\+: command not found\)"):
        strings = rans.compress(gc, x, idx)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning, not one per call
        assert strings == gc.compress(x, idx)
        assert torch.equal(rans.decompress(gc, strings, idx), gc.decompress(strings, idx))


# -- the model and the codec ------------------------------------------------------------------------


def _old_code_colour(self, y_slice, means, scales, colour, part, symbols_hook):
    """MambaIC._code_colour before the C++ coder (mambaic 0.4.0): CompressAI's compress."""
    from mambaic.models import checkerboard as cb

    packed_means = cb.pack(means, colour)
    indexes = self.gaussian_conditional.build_indexes(cb.pack(scales, colour))
    packed_y = cb.pack(y_slice, colour)
    strings = self.gaussian_conditional.compress(packed_y, indexes, means=packed_means)
    if symbols_hook is not None:
        symbols_hook(part, self.gaussian_conditional.quantize(packed_y, "symbols", packed_means))
    y_hat = self.gaussian_conditional.quantize(packed_y, "dequantize", packed_means)
    return strings, cb.unpack(y_hat, colour)


def _old_code_z(self, z, symbols_hook):
    strings = self.entropy_bottleneck.compress(z)
    if symbols_hook is not None:
        medians = self._z_medians(z.shape[0], z.dim() - 2)
        symbols_hook(0, self.entropy_bottleneck.quantize(z, "symbols", medians))
    return strings, self.entropy_bottleneck.decompress(strings, z.shape[-2:])


def test_model_strings_are_unchanged(ext, tiny, monkeypatch):
    """The tiny model's compress: strings, y_hat and the symbols the hook sees are those of the
    CompressAI path it replaced; decompress rebuilds y_hat, showing its hook the same symbols."""
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(5))  # batches: the tests above
    seen_new, seen_old, seen_decoder = [], [], []
    with torch.no_grad():
        new = tiny.compress(x, symbols_hook=lambda p, s: seen_new.append((p, s.clone())))
        with monkeypatch.context() as m:
            m.setattr(type(tiny), "_code_colour", _old_code_colour)
            m.setattr(type(tiny), "_code_z", _old_code_z)
            old = tiny.compress(x, symbols_hook=lambda p, s: seen_old.append((p, s.clone())))
        out = tiny.decompress(new["strings"], new["shape"], symbols_hook=lambda p, s: seen_decoder.append((p, s)))
    assert new["strings"] == old["strings"]
    assert torch.equal(new["y_hat"], old["y_hat"]) and torch.equal(out["y_hat"], new["y_hat"])
    parts = list(range(1 + 2 * tiny.num_slices))
    assert [p for p, _ in seen_new] == [p for p, _ in seen_old] == [p for p, _ in seen_decoder] == parts
    for (p, a), (_, b), (_, c) in zip(seen_new, seen_old, seen_decoder):
        assert a.dtype == b.dtype == c.dtype == torch.int32 and torch.equal(a, b) and torch.equal(a, c), f"part {p}"


def test_codec_reports_corrupt_strings(ext, tiny):
    """Bytes moved between strings behind correct CRCs: the entropy decoder stops. In z (whose
    CDF rows are fixed) it is a damaged file: the codec names the file, the payload offset and
    the part. In a y part it may as well be another platform's arithmetic (other CDF rows): the
    latent verifier reports it, saying what differs (here nothing: the file is damaged)."""
    mic = encode_image(tiny, torch.rand(1, 3, 40, 30, generator=torch.Generator().manual_seed(6))).mic
    (a0, n0), z = mic.slices[0], mic.z_string
    forged = MicFile(**{**mic.__dict__, "z_string": z[:-4], "slices": [(z[-4:] + a0, n0), *mic.slices[1:]]})
    data = forged.to_bytes()
    header = len(data) - sum(map(len, forged.strings()))
    for source in (data, forged):
        with pytest.raises(MicFormatError) as info:
            decode_image(tiny, source, "x.mic")
        err = info.value
        assert (err.field, err.offset) == ("payload", header), str(err)
        want = f"x.mic: payload at byte {header}: the string of z (the hyper-latent): corrupt entropy-coded string: "
        assert str(err).startswith(want + "the decoder reads past its end"), str(err)
    forged = MicFile(**{**mic.__dict__, "slices": [(a0[:-4], a0[-4:] + n0), *mic.slices[1:]]})
    with pytest.raises(LatentMismatchError) as info:
        decode_image(tiny, forged.to_bytes(), "x.mic")
    assert info.value.part == 1 and info.value.differences == []
    want = "x.mic: slice 1 of 5 (anchors) could not be entropy-decoded (corrupt entropy-coded string: the decoder "
    assert str(info.value).startswith(want + "reads past its end"), str(info.value)
    assert "the file is damaged or this is a bug" in str(info.value)
