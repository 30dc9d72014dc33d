"""Determinism on one device and backend (issue 15, point 4): 100 random crops of photographs
compress, then decompress to a bit-exact y_hat, and two compressions of an image are the same file.
MAMBAIC_DETERMINISM_CROPS changes the count (the GPU run uses the default, on its device)."""

import os

import numpy as np
import pytest
import torch
from skimage import data

from mambaic.codec import decode_image, encode_image

CROPS = int(os.environ.get("MAMBAIC_DETERMINISM_CROPS", "100"))
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def random_crops(n: int, seed: int = 0):
    """``n`` crops of random position and size (1 to 200 pixels a side, H != W mostly)."""
    rng = np.random.default_rng(seed)
    images = [getattr(data, name)() for name in PHOTOS]
    for i in range(n):
        rgb = images[i % len(images)]
        h, w = (int(rng.integers(1, 201)) for _ in range(2))
        top, left = int(rng.integers(0, rgb.shape[0] - h + 1)), int(rng.integers(0, rgb.shape[1] - w + 1))
        yield i, torch.from_numpy(rgb[top : top + h, left : left + w].copy()).permute(2, 0, 1)[None].float() / 255


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU"))])  # fmt: skip
def test_random_crops_round_trip_bit_exactly(tiny, device):
    model = tiny.to(device)
    try:
        for i, x in random_crops(CROPS):
            first = encode_image(model, x.to(device))
            if i % 5 == 0:  # a second compression of every fifth crop: the same bytes
                assert encode_image(model, x.to(device)).data == first.data, f"crop {i}: two compressions differ"
            x_hat, y_hat = decode_image(model, first.data, f"crop{i}.mic")
            assert torch.equal(y_hat, first.y_hat), f"crop {i} {tuple(x.shape)}: y_hat differs after decoding"
            assert x_hat.shape == x.shape
    finally:
        tiny.to("cpu")
