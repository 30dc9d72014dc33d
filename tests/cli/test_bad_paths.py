"""Bad images and paths on the command line: a one-line error, exit code 1, no traceback, no
output written and the input untouched; EXIF orientation applied; CMYK accepted."""

import hashlib
import io
import os

import numpy as np
import pytest
from PIL import Image
from skimage import data

from mambaic.cli import compress, decompress
from mambaic.image import read_image

from .test_cli import TINY_ARGS, run


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    rgb = data.astronaut()[100:150, 180:250]  # 70x50
    Image.fromarray(rgb).save(folder / "a.png")
    Image.fromarray(rgb).save(folder / "a.jpg", quality=95)
    return folder


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _refused(capsys, command, argv, message, output):
    code, out, err = run(capsys, command, argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and lines and lines[0].startswith("Error: ") and message in err, err
    assert len(lines) == 1, f"more than one line: {err}"
    assert output is None or not os.path.exists(output), f"{output} written"
    return err


def _truncated(src, dst, keep: float):
    blob = open(src, "rb").read()
    open(dst, "wb").write(blob[: int(len(blob) * keep)])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda f: f / "missing.png", "no such file"),
        (lambda f: (f / "dir.png").mkdir() or f / "dir.png", "is a folder, not an image"),
        (lambda f: _truncated(f / "a.png", f / "t.png", 0.5) or f / "t.png", "not a readable image"),
        (lambda f: _truncated(f / "a.jpg", f / "t.jpg", 0.4) or f / "t.jpg", "not a readable image"),
        (lambda f: [(f / "x.png").write_bytes(b"GIF89a" + bytes(40)), f / "x.png"][1], "not a readable image"),
    ],
    ids=["missing", "folder", "truncated-png", "truncated-jpeg", "not-an-image"],
)
def test_bad_images(tmp_path, capsys, photo, make, message):
    for name in ("a.png", "a.jpg"):
        (tmp_path / name).write_bytes((photo / name).read_bytes())
    src, out = make(tmp_path), tmp_path / "o.mic"
    _refused(capsys, compress, [src, out, *TINY_ARGS], message, out)


def test_permission_denied(tmp_path, capsys, photo, monkeypatch):
    src = tmp_path / "locked.png"
    src.write_bytes((photo / "a.png").read_bytes())
    src.chmod(0)
    if os.access(src, os.R_OK):  # root reads any file: make the open fail as it would for a user

        def denied(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr("mambaic.image.Image.open", denied)
    try:
        _refused(capsys, compress, [src, tmp_path / "o.mic", *TINY_ARGS], "locked.png: cannot read it (permission denied)",
                 tmp_path / "o.mic")  # fmt: skip
    finally:
        src.chmod(0o600)


def test_max_pixels_names_the_option(tmp_path, capsys, photo):
    out = tmp_path / "o.mic"
    err = _refused(capsys, compress, [photo / "a.png", out, "--max-pixels", "3000", *TINY_ARGS],
                   "70x50 is 3,500 pixels, above the limit of 3,000 (--max-pixels)", out)  # fmt: skip
    assert "a.png" in err


def test_outputs(tmp_path, capsys, photo):
    src, out = photo / "a.png", tmp_path / "o.mic"
    before = _digest(src)
    assert run(capsys, compress, [src, out, *TINY_ARGS])[0] == 0
    first = out.read_bytes()
    # an existing output is refused unless --force, and left as it was
    _refused(capsys, compress, [src, out, *TINY_ARGS], "o.mic: exists; pass --force to replace it", None)
    assert out.read_bytes() == first
    assert run(capsys, compress, [src, out, "--force", *TINY_ARGS])[0] == 0
    # a missing folder, a folder as output, the input as output (even with --force)
    _refused(capsys, compress, [src, tmp_path / "no" / "o.mic", *TINY_ARGS], "does not exist", tmp_path / "no")
    _refused(capsys, compress, [src, tmp_path, *TINY_ARGS], "is a folder; give a file name", None)
    _refused(capsys, compress, [src, src, "--force", *TINY_ARGS], "is the input file", None)
    assert _digest(src) == before
    png = tmp_path / "o.png"
    assert run(capsys, decompress, [out, png, *TINY_ARGS])[0] == 0
    _refused(capsys, decompress, [out, png, *TINY_ARGS], "exists; pass --force", None)
    _refused(capsys, decompress, [out, out, "--force", *TINY_ARGS], "is the input file", None)
    _refused(capsys, decompress, [tmp_path, tmp_path / "p.png", *TINY_ARGS], "is a folder, not a .mic file", tmp_path / "p.png")
    assert out.read_bytes() == first or run(capsys, decompress, [out, png, "--force", *TINY_ARGS])[0] == 0


def test_exif_orientation_is_applied(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:5, :5] = 255  # a white top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", exif=exif, quality=100)
    path = tmp_path / "rotated.jpg"
    path.write_bytes(buf.getvalue())
    x = read_image(path)
    assert x.shape == (1, 3, 30, 20)  # shown upright: 20 wide, 30 high
    assert x[0, :, :5, -5:].mean() > 0.9  # the corner is now top-right


def test_cmyk_and_palette_are_converted(tmp_path, photo):
    for mode in ("CMYK", "P"):
        path = tmp_path / f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
        Image.open(photo / "a.png").convert(mode).save(path)
        x = read_image(path)
        assert x.shape == (1, 3, 50, 70) and x.min() >= 0 and x.max() <= 1
