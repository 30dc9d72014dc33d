"""Fixtures of the codec tests: a tiny MambaIC (updated for entropy coding) and real photographs."""

import pytest
import torch
from skimage import data

import mambaic

TINY = dict(N=8, M=20, depths=(1, 1, 1, 1), z_channels=8)


@pytest.fixture(scope="package")
def tiny():
    model = mambaic.random_model(0, **TINY)
    model.update()
    return model


def photo(name: str, height: int, width: int, top: int = 0, left: int = 0) -> torch.Tensor:
    """A crop of one of scikit-image's bundled photographs, (1, 3, H, W) float in [0, 1]."""
    rgb = getattr(data, name)()[top : top + height, left : left + width]
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
