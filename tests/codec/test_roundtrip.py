"""Round trips through .mic files: any size, bit-exact latents, and the forward pass's image."""

import pytest
import torch

from mambaic.codec import decode_image, encode_image, read_mic
from mambaic.image import crop, pad_to_multiple, padding_for, write_atomic

from .conftest import photo


@pytest.mark.parametrize(
    "name, height, width, top, left",
    [
        pytest.param("astronaut", 96, 160, 40, 180, id="astronaut-96x160"),
        pytest.param("coffee", 75, 131, 100, 200, id="coffee-75x131"),
    ],
)
def test_photo_round_trip_through_a_file(tmp_path, tiny, name, height, width, top, left):
    x = photo(name, height, width, top, left)
    encoded = encode_image(tiny, x)
    path = tmp_path / f"{name}.mic"
    write_atomic(path, encoded.data)
    x_hat, y_hat = decode_image(tiny, path.read_bytes(), str(path))

    assert torch.equal(y_hat, encoded.y_hat), "the decoder must rebuild the encoder's y_hat bit for bit"
    assert x_hat.shape == x.shape
    # the decoded image is the eval-mode forward reconstruction of the padded image, cropped
    with torch.no_grad():
        forward = tiny(pad_to_multiple(x)[0])["x_hat"].clamp(0, 1)
    torch.testing.assert_close(x_hat, crop(forward, height, width), rtol=0, atol=1e-5)
    mic = read_mic(encoded.data)
    assert (mic.height, mic.width) == (height, width)
    assert encoded.bits_per_pixel() == pytest.approx(8 * len(encoded.data) / (height * width))


@pytest.mark.parametrize(
    "height, width",
    [(1, 1), (7, 9), (64, 64), (128, 128), (129, 131)],
    ids=lambda v: str(v),
)
def test_any_size(tiny, height, width):
    x = torch.rand(1, 3, height, width)
    encoded = encode_image(tiny, x)
    x_hat, y_hat = decode_image(tiny, encoded.data)
    assert x_hat.shape == (1, 3, height, width)
    assert torch.equal(y_hat, encoded.y_hat)
    assert 0 <= x_hat.min() and x_hat.max() <= 1
    mic = encoded.mic
    assert (mic.height + mic.pad_bottom) % 128 == 0 and (mic.width + mic.pad_right) % 128 == 0
    assert mic.y_shape == ((height + mic.pad_bottom) // 16, (width + mic.pad_right) // 16)


def test_padding_policy():
    assert padding_for(1080, 1920) == (72, 0)  # 1920x1080 is coded as 1920x1152
    assert padding_for(128, 256) == (0, 0)  # official sizes are not padded
    assert padding_for(1, 1) == (127, 127)
    x = torch.arange(6.0).view(1, 1, 2, 3)
    padded, pads = pad_to_multiple(x, 4)
    assert pads == (2, 1)
    assert padded[0, 0].tolist() == [[0, 1, 2, 2], [3, 4, 5, 5], [3, 4, 5, 5], [3, 4, 5, 5]]  # replicate
    assert torch.equal(crop(padded, 2, 3), x)


def test_official_sizes_are_coded_unpadded(tiny):
    """Where the official code runs (sides multiples of 128), the codec runs the model on the image
    itself, so its y_hat is the model's own compress output."""
    x = photo("astronaut", 128, 256)
    encoded = encode_image(tiny, x)
    assert (encoded.mic.pad_bottom, encoded.mic.pad_right) == (0, 0)
    with torch.no_grad():
        assert torch.equal(tiny.compress(x)["y_hat"], encoded.y_hat)


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "out.mic"
    target.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, b"new content")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.mic"], "the temporary file must be removed"
