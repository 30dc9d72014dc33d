"""A file records its precision; the same precision decodes it bit-exactly, another is refused
before anything is decoded."""

import pytest
import torch

import mambaic
from mambaic.codec import PrecisionMismatchError, decode_image, encode_image, read_mic

from .conftest import TINY, photo


@pytest.mark.parametrize("precision", ["bf16", "tf32"])
def test_a_file_decodes_in_its_precision_only(precision):
    model = mambaic.random_model(0, **TINY).set_precision(precision)
    encoded = encode_image(model, photo("astronaut", 70, 150, 40, 160))
    assert read_mic(encoded.data).platform["precision"] == precision
    x_hat, y_hat = decode_image(mambaic.random_model(0, **TINY).set_precision(precision), encoded.data)
    torch.testing.assert_close(y_hat, encoded.y_hat, rtol=0, atol=0)
    assert x_hat.dtype == torch.float32 and x_hat.shape == (1, 3, 70, 150)

    other = "fp32" if precision != "fp32" else "bf16"
    with pytest.raises(PrecisionMismatchError) as caught:
        decode_image(mambaic.random_model(0, **TINY).set_precision(other), encoded.data, "a.mic")
    assert str(caught.value) == (
        f"a.mic: encoded in {precision}, but this model runs in {other}; decode in {precision} "
        f"(mambaic decompress --precision {precision}, or model.set_precision({precision!r}))"
    )
