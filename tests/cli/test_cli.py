"""`mambaic compress` / `mambaic decompress` through main(argv): files on disk, messages, exit codes."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from skimage import data

import mambaic
import mambaic.cli.info
from mambaic.cli import compress, decompress
from mambaic.codec import decode_image
from mambaic.image import to_uint8
from mambaic.cli.main import main as mambaic_main

TINY_ARGS = ["--random-init", "--seed", "3", "--N", "8", "--M", "20", "--depths", "1,1,1,1", "--z-channels", "8"]


def png16(path, array: np.ndarray) -> None:
    """Write a 16-bit PNG (PIL cannot write 16-bit RGB): grayscale for 2-D, RGB for 3-D arrays."""
    h, w = array.shape[:2]
    rows = b"".join(b"\x00" + array[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    colour = 0 if array.ndim == 2 else 2
    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


@pytest.fixture(scope="module")
def photo_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "coffee.png"
    Image.fromarray(data.coffee()[50:111, 300:377]).save(path)  # 77x61, odd sizes
    return path


def run(capsys, command, argv):
    code = command.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_round_trip(tmp_path, capsys, photo_png):
    mic, png = tmp_path / "c.mic", tmp_path / "c.png"
    code, out, err = run(capsys, compress, [photo_png, mic, *TINY_ARGS])
    assert code == 0, err
    assert "77x61 (coded as 128x128)" in out and "bpp: " in out and "encode" in out
    # the decoder takes the model size from the file; only the seed is needed
    code, out, err = run(capsys, decompress, [mic, png, "--random-init", "--seed", "3"])
    assert code == 0, err
    with Image.open(png) as im:
        assert (im.size, im.mode) == ((77, 61), "RGB")
        decoded = np.asarray(im)
    # the PNG holds exactly the codec's reconstruction, rounded to 8 bits
    model = mambaic.random_model(3, N=8, M=20, depths=(1, 1, 1, 1), z_channels=8)
    x_hat, _ = decode_image(model, mic.read_bytes())
    assert np.array_equal(decoded, to_uint8(x_hat))


@pytest.mark.parametrize("mode, warns", [("L", False), ("RGBA", True), ("P", False)])
def test_image_modes(tmp_path, capsys, photo_png, mode, warns):
    path = tmp_path / f"in_{mode}.png"
    Image.open(photo_png).convert(mode).save(path)
    code, out, err = run(capsys, compress, [path, tmp_path / "o.mic", *TINY_ARGS])
    assert code == 0, err
    assert ("dropping the alpha channel" in err) == warns


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: png16(p, np.full((5, 7), 40000)), "I;16 images (more than 8 bits per sample) are not supported"),
        (lambda p: png16(p, np.full((5, 7, 3), 40000)), "RGB;16B images (more than 8 bits per sample)"),
        (lambda p: p.write_text("hello"), "not a readable image"),
        (lambda p: None, "no such file"),
    ],
    ids=["gray16", "rgb16", "text", "missing"],
)
def test_refused_inputs(tmp_path, capsys, make, message):
    src = tmp_path / "in.png"
    make(src)
    code, out, err = run(capsys, compress, [src, tmp_path / "o.mic", *TINY_ARGS])
    assert code == 1 and err.startswith("Error: ") and message in err, err
    assert not (tmp_path / "o.mic").exists()


def test_decoder_errors(tmp_path, capsys, photo_png):
    mic = tmp_path / "c.mic"
    assert run(capsys, compress, [photo_png, mic, *TINY_ARGS])[0] == 0
    blob = bytearray(mic.read_bytes())
    blob[-3] ^= 0xFF
    bad = tmp_path / "bad.mic"
    bad.write_bytes(bytes(blob))
    code, _, err = run(capsys, decompress, [bad, tmp_path / "o.png", "--random-init", "--seed", "3"])
    assert code == 1 and f"Error: {bad}: payload_crc32 at byte 72" in err, err

    code, _, err = run(capsys, decompress, [mic, tmp_path / "o.png", "--random-init", "--seed", "4"])
    assert code == 1 and "encoded with other model weights" in err, err

    code, _, err = run(capsys, decompress, [photo_png, tmp_path / "o.png", "--random-init"])
    assert code == 1 and "magic at byte 0" in err and "not a .mic file" in err, err
    assert not (tmp_path / "o.png").exists()


def test_option_errors(tmp_path, capsys, photo_png):
    code, _, err = run(capsys, compress, [photo_png, tmp_path / "o.mic", "--checkpoint", tmp_path / "none.pth.tar"])
    assert code == 1 and "none.pth.tar: no such file" in err
    code, _, err = run(capsys, compress, [photo_png, tmp_path / "o.mic", "--checkpoint", photo_png, "--N", "8"])
    assert code == 1 and "only apply to --random-init" in err
    code, _, err = run(capsys, compress, [photo_png, tmp_path / "o.mic", "--random-init", "--N", "8", "--M", "21"])
    assert code == 1 and "M must be a multiple of num_slices" in err
    with pytest.raises(SystemExit):
        compress.main([str(photo_png), str(tmp_path / "o.mic"), "--random-init", "--depths", "2,2"])


def test_cuda_refused_without_gpu(tmp_path, capsys, photo_png):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, _, err = run(capsys, compress, [photo_png, tmp_path / "o.mic", *TINY_ARGS, "--device", "cuda"])
    assert code == 1 and "--device cuda, but torch.cuda.is_available() is False" in err


def test_commands_are_registered(capsys):
    assert mambaic_main([]) == 2
    out = capsys.readouterr().out
    assert "compress" in out and "decompress" in out


def test_decompress_refuses_a_latent_mismatch_and_writes_nothing(tmp_path, capsys, photo_png):
    from tests.codec.test_verified import forge_checksum

    mic = tmp_path / "c.mic"
    assert run(capsys, compress, [photo_png, mic, *TINY_ARGS])[0] == 0
    bad = tmp_path / "bad.mic"
    bad.write_bytes(forge_checksum(mic.read_bytes(), 4))
    out_png = tmp_path / "o.png"
    code, out, err = run(capsys, decompress, [bad, out_png, "--random-init", "--seed", "3"])
    assert code == 1 and err.startswith(f"Error: {bad}: slice 2 of 5 (non-anchors) decoded to other latents"), err
    assert "Nothing was written." in err
    assert not out_png.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.mic", "c.mic"]


def test_info_prints_what_a_file_records(tmp_path, capsys, photo_png):
    mic = tmp_path / "c.mic"
    assert run(capsys, compress, [photo_png, mic, *TINY_ARGS, "--threads", "1"])[0] == 0
    code, out, err = run(capsys, mambaic.cli.info, [mic])
    assert code == 0, err
    for text in ("format               version 2", "image                77x61 (coded as 128x128",
                 "slice 5 of 5 (non-anchors)", "checksum ", "encoder platform:", "threads                        1",
                 "backend ss2d_core", "device                         cpu", "precision                      fp32"):  # fmt: skip
        assert text in out, text
    code, _, err = run(capsys, mambaic.cli.info, [photo_png])
    assert code == 1 and "not a .mic file" in err


def test_decompress_follows_the_encoders_thread_count(tmp_path, capsys, photo_png, monkeypatch):
    import torch

    mic = tmp_path / "c.mic"
    before = torch.get_num_threads()
    try:
        assert run(capsys, compress, [photo_png, mic, *TINY_ARGS, "--threads", "1"])[0] == 0
        torch.set_num_threads(2)
        seen = []
        import mambaic.codec as codec  # decompress imports decode_image from here at each run

        original = codec.decode_image

        def spy(*args, **kwargs):
            seen.append(torch.get_num_threads())
            return original(*args, **kwargs)

        monkeypatch.setattr(codec, "decode_image", spy)
        code, out, err = run(capsys, decompress, [mic, tmp_path / "o.png", "--random-init", "--seed", "3"])
        assert code == 0 and "verified: the 11 latent parts match" in out, err
        assert seen == [1], "the decoder runs with the encoder's thread count"
        code, out, err = run(capsys, decompress, [mic, tmp_path / "p.png", "--random-init", "--seed", "3", "--threads", "2"])
        assert code == 0 and seen == [1, 2], "--threads is honoured"
    finally:
        torch.set_num_threads(before)


def test_version_1_file_decodes_with_a_warning(tmp_path, capsys):
    from ..codec.conftest import TINY
    from ..codec.version1 import V1_FILE as v1, skip_unless_v1_tables_reproduce

    skip_unless_v1_tables_reproduce(TINY)
    code, out, err = run(capsys, decompress, [v1, tmp_path / "o.png", "--random-init", "--seed", "3"])
    assert code == 0, err
    assert "Warning: " in err and "records no latent checksums, so this decode cannot be verified" in err
    assert (tmp_path / "o.png").exists() and "verified" not in out


def test_precision_is_recorded_followed_and_enforced(tmp_path, capsys, photo_png):
    mic, png = tmp_path / "c.mic", tmp_path / "c.png"
    code, out, err = run(capsys, compress, [photo_png, mic, *TINY_ARGS, "--precision", "bf16"])
    assert code == 0 and out.rstrip().endswith(", bf16"), (out, err)
    # decompress runs in the file's precision by default
    code, out, err = run(capsys, decompress, [mic, png, "--random-init", "--seed", "3"])
    assert code == 0 and png.exists(), err
    # another precision is refused, and nothing is written
    other = tmp_path / "other.png"
    code, out, err = run(capsys, decompress, [mic, other, "--random-init", "--seed", "3", "--precision", "fp32"])
    assert code == 1 and err.startswith(f"Error: {mic}: encoded in bf16, but this model runs in fp32"), err
    assert "Nothing was written." in err and not other.exists()
    with pytest.raises(SystemExit) as caught:
        compress.main([str(photo_png), str(mic), *TINY_ARGS, "--precision", "half"])
    assert caught.value.code == 2 and "invalid choice: 'half'" in capsys.readouterr().err
