"""Verified decoding: the header records the encoder's platform, every part's latent checksum is
checked as it is decoded, the decoder follows the encoder, and version 1 files still decode."""

import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import mambaic
import mambaic_kernels as mk
from mambaic.codec import (
    LatentMismatchError,
    MicFile,
    TablesMismatchError,
    UnverifiedFileWarning,
    WeightsMismatchError,
    decode_image,
    encode_image,
    encoder_backends,
    read_mic,
    tables_fingerprint,
    weights_fingerprint,
)
from mambaic.codec.container import FIXED_SIZE, pack_platform, unpack_platform
from mambaic.image import to_uint8
from mambaic_kernels import _backend

from .conftest import TINY, photo
from .version1 import V1_FILE, V1_SEED, skip_unless_v1_tables_reproduce, v1_tables_reproduce

EXPECTED = __import__("pathlib").Path(__file__).resolve().parents[1] / "expected"
PHOTOS = [("astronaut", 96, 131, 40, 180), ("coffee", 75, 140, 100, 200), ("chelsea", 130, 70, 60, 150)]
MODEL_OPS = ("ss2d_core", "window_attention")  # the ops the model calls (ss2d_core runs its own scans)


@pytest.fixture(scope="module")
def torch_file(tiny):
    with mk.use_backend("torch"):
        return encode_image(tiny, photo("coffee", 75, 131, 100, 200))


def forge_checksum(data: bytes, part: int) -> bytes:
    """Flip a bit of one part's latent checksum and fix the header CRC: only the latent check can see it."""
    data = bytearray(data)
    num_slices = data[21]
    data[FIXED_SIZE[2] + 4 * (1 + 2 * num_slices) + 4 * part] ^= 0x01
    crc_at = struct.unpack_from("<H", data, 6)[0] - 4
    struct.pack_into("<I", data, crc_at, zlib.crc32(bytes(data[:crc_at])))
    return bytes(data)


def test_header_records_the_platform(torch_file):
    p = read_mic(torch_file.data).platform
    assert p == torch_file.mic.platform
    assert p["device"] == "cpu" and p["device_name"] and p["precision"] == "fp32"
    assert p["backends"] == {op: "torch" for op in MODEL_OPS}
    assert p["threads"] == torch.get_num_threads()
    assert p["mambaic"] == mambaic.__version__ and p["torch"] == torch.__version__
    assert {"triton", "cuda", "compressai"} <= set(p)
    assert len(read_mic(torch_file.data).checksums) == 1 + 2 * 5


def test_platform_record_round_trip_and_limits():
    p = {"device": "cuda", "device_name": "NVIDIA H200", "backends": {"cross_scan": "triton"}, "threads": 16}
    assert unpack_platform(pack_platform(p)) == p
    assert len(pack_platform(p)) < 60  # the preset dictionary keeps the usual record small
    with pytest.raises(ValueError, match="at most 4096"):
        pack_platform({"backends": {}, "x": "y" * 5000})
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    with pytest.raises(ValueError, match="inflates to more than 4096 bytes"):
        unpack_platform(bomb.compress(b" " * 100_000) + bomb.flush())
    with pytest.raises(ValueError, match="not a deflated record"):
        unpack_platform(b"\xff\xff\xff")


@pytest.mark.parametrize("part, name", [(0, "z (the hyper-latent)"), (3, "slice 2 of 5 (anchors)"), (10, "slice 5 of 5 (non-anchors)")])
def test_a_wrong_checksum_stops_the_decoder_at_that_part(tiny, torch_file, part, name):
    seen = []
    verify = __import__("mambaic.codec.verify", fromlist=["LatentVerifier"]).LatentVerifier
    original = verify.__call__

    def spy(self, p, symbols):
        seen.append(p)
        return original(self, p, symbols)

    with pytest.MonkeyPatch.context() as mp, mk.use_backend("torch"):
        mp.setattr(verify, "__call__", spy)
        with pytest.raises(LatentMismatchError) as info:
            decode_image(tiny, forge_checksum(torch_file.data, part), "x.mic")
    err = info.value
    assert err.part == part and seen == list(range(part + 1)), "the decoder must stop at the first bad part"
    assert str(err).startswith(f"x.mic: {name} decoded to other latents than the encoder's")
    assert "the platforms agree on every recorded fact: the file is damaged or this is a bug" in str(err)


def perturb(monkeypatch, backend: str, op: str, size: float) -> None:
    """Make one backend's op compute slightly differently: another platform's arithmetic. (Not a
    uniform scale: the LayerNorm after the scan would remove it.)"""
    impl = _backend._registry[op][backend]

    def fn(*args):
        y = impl.fn(*args)
        return y + size * torch.cos(torch.arange(y.numel(), dtype=y.dtype)).view_as(y)

    monkeypatch.setitem(_backend._registry[op], backend, _backend.Implementation(fn, impl.supports))


def test_other_arithmetic_is_refused_with_what_differs(tiny, torch_file, monkeypatch):
    """A decoder whose scan differs a little (as another device's does in its last bits, only more
    often) desynchronises; the error names the part, the backends, and what to do."""
    assert _backend.why_unavailable_typically("ss2d_core", "cpu", "cpu") is None
    perturb(monkeypatch, "cpu", "ss2d_core", 0.05)
    with pytest.raises(LatentMismatchError) as info, mk.use_backend("cpu"):
        decode_image(tiny, torch_file.data, "x.mic")
    msg = str(info.value)
    assert info.value.part >= 1  # z needs no op: it always decodes
    assert "Encoded with backend torch on cpu" in msg and "decoding with backend cpu on cpu" in msg
    assert "ss2d_core ran on torch in the encoder, cpu here" in msg
    assert "To decode it: decode with MAMBAIC_BACKEND=torch" in msg


def assert_exact_or_refused(model, encoder: str, decoder: str) -> list[str]:
    """Encode the photos with one backend, decode with another: each decode must refuse or give
    the encoder's symbols (y_hat within float noise; a symbol is 1 apart). Returns the outcomes."""
    outcomes = []
    for name, h, w, top, left in PHOTOS:
        with mk.use_backend(encoder):
            encoded = encode_image(model, photo(name, h, w, top, left))
        try:
            with mk.use_backend(decoder):
                _, y_hat = decode_image(model, encoded.data)
        except LatentMismatchError as exc:
            assert encoder != decoder, f"{name}: the encoder's own platform refused: {exc}"
            outcomes.append("refused")
            continue
        assert (y_hat - encoded.y_hat).abs().max() < 1e-3, f"{name}: decoded to other symbols without an error"
        outcomes.append("exact")
    return outcomes


@pytest.mark.parametrize("encoder, decoder", [("torch", "cpu"), ("cpu", "torch"), ("cpu", "cpu")])
def test_across_backends_exact_or_refused(tiny, encoder, decoder):
    outcomes = assert_exact_or_refused(tiny, encoder, decoder)
    assert len(outcomes) == len(PHOTOS)
    if encoder == decoder:
        assert outcomes == ["exact"] * len(PHOTOS)


def test_decoder_follows_the_encoder(tiny, torch_file, monkeypatch):
    monkeypatch.delenv("MAMBAIC_BACKEND", raising=False)
    assert encoder_backends(torch_file.mic, "cpu") == {op: "torch" for op in MODEL_OPS}
    assert encoder_backends(torch_file.mic, "cuda") == {}  # encoded on another kind of device
    with _backend.recording() as used:
        _, y_hat = decode_image(tiny, torch_file.data)
    assert used == {op: ["torch"] for op in MODEL_OPS}
    assert torch.equal(y_hat, torch_file.y_hat)
    # an explicit choice is honoured (and verified), in code and through the variable
    with _backend.recording() as used, mk.use_backend("cpu"):
        decode_image(tiny, torch_file.data)
    assert set(used["ss2d_core"]) == {"cpu"}
    monkeypatch.setenv("MAMBAIC_BACKEND", "cpu")
    with _backend.recording() as used:
        decode_image(tiny, torch_file.data)
    assert set(used["ss2d_core"]) == {"cpu"}
    with _backend.recording() as used:
        decode_image(tiny, torch_file.data, follow_encoder=False)
    assert set(used["ss2d_core"]) == {"cpu"}


def test_version_1_file_decodes_with_a_warning():
    """A file written by the version 1 encoder (commit c529589, torch backend, 1 thread, CPU)."""
    data = V1_FILE.read_bytes()
    assert read_mic(data).version == 1 and not read_mic(data).verifiable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnverifiedFileWarning)
        with pytest.raises(WeightsMismatchError, match="a version 1 file encoded with other model weights or entropy tables"):
            decode_image(mambaic.random_model(V1_SEED + 1, **TINY), data, "v1.mic")
    skip_unless_v1_tables_reproduce(TINY)
    model = mambaic.random_model(V1_SEED, **TINY)
    model.update(force=True)  # the tables a loaded checkpoint has
    before = tables_fingerprint(model)
    with pytest.warns(UnverifiedFileWarning, match="v1.mic is a version 1 .mic file: it records no latent checksums"):
        with mk.use_backend("torch"), _backend.recording() as used:
            x_hat, _ = decode_image(model, data, "v1.mic")
    # the SS2D cores ran as in mambaic 0.1 (the public ops in sequence), not through ss2d_core
    assert "ss2d_core" not in used and used["selective_scan"] == ["torch"] and used["cross_merge"] == ["torch"]
    expected = np.asarray(Image.open(EXPECTED / "astronaut_41x57_v1_decoded.png"))
    assert np.abs(to_uint8(x_hat).astype(int) - expected).max() <= 1
    assert tables_fingerprint(model) == before, "the v1 decode must leave the model's tables as they were"


def test_version_1_file_refused_where_its_tables_differ():
    """Where this machine's float32 update() gives other tables than the encoder's, the right
    weights still cannot decode the file: it is refused with the documented error, never decoded
    wrong, and the error names this cause."""
    if v1_tables_reproduce(TINY):
        pytest.skip("this machine reproduces the version 1 encoder's tables: the decode test covers it")
    model = mambaic.random_model(V1_SEED, **TINY)
    model.update(force=True)  # the tables a loaded checkpoint has
    tables = tables_fingerprint(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnverifiedFileWarning)
        with pytest.raises(WeightsMismatchError, match="computed on another kind of machine"):
            decode_image(model, V1_FILE.read_bytes(), "v1.mic")
    assert tables_fingerprint(model) == tables, "the refused decode must leave the model's tables as they were"


def test_tables_do_not_depend_on_where_update_ran():
    """The tables come from float64 on the CPU: a model in float64 gets the same ones as in
    float32 (CompressAI's own update, in the model's precision, gives other tables)."""
    from compressai.models import CompressionModel

    a, b = mambaic.random_model(5, **TINY), mambaic.random_model(5, **TINY).double()
    a.update(force=True)
    b.update(force=True)
    assert tables_fingerprint(a) == tables_fingerprint(b)
    for name, t in a.state_dict().items():
        if name.endswith(("_quantized_cdf", "_offset", "_cdf_length")):
            assert torch.equal(t, b.state_dict()[name]), name
    CompressionModel.update(a, force=True)
    CompressionModel.update(b, force=True)
    assert tables_fingerprint(a) != tables_fingerprint(b), "the test must tell the two ways apart"


def test_fingerprints_weights_and_tables_apart(tiny, torch_file):
    model = mambaic.random_model(0, **TINY)
    assert weights_fingerprint(model) == weights_fingerprint(tiny)
    model.update(scale_table=torch.exp(torch.linspace(-2, 5, 40)).tolist(), force=True)  # other tables only
    assert weights_fingerprint(model) == weights_fingerprint(tiny)
    with pytest.raises(TablesMismatchError) as info:
        decode_image(model, torch_file.data, "x.mic")
    assert "the weights are the encoder's, but the entropy coder's tables are not" in str(info.value)
    assert "other model weights" not in str(info.value)


def test_version_2_is_written(torch_file):
    assert torch_file.data[4] == 2 and isinstance(read_mic(torch_file.data), MicFile)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: triton and torch on CUDA tensors")
@pytest.mark.parametrize("encoder, decoder", [("triton", "torch"), ("torch", "triton"), ("triton", "triton")])
def test_gpu_backends_exact_or_refused(encoder, decoder):
    """On the GPU (bench/compat.py gives the full table): exact or refused, never a wrong image."""
    assert_exact_or_refused(mambaic.random_model(0, **TINY).cuda(), encoder, decoder)


def test_two_compressions_give_identical_files(tiny):
    x = photo("chelsea", 70, 90, 100, 200)
    with mk.use_backend("torch"):
        assert encode_image(tiny, x).data == encode_image(tiny, x).data
