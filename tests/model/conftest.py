"""Fixtures of the model tests: a tiny MambaIC (CPU, seconds) and the official state-dict listing."""

import json
from pathlib import Path

import pytest
import torch

import mambaic

EXPECTED = Path(__file__).resolve().parents[1] / "expected"
# Small enough for a 2-core CI machine, with every part of the model present (5 slices, 1 VSS
# block per stage). The channel-wise entropy model keeps the official hidden widths (128, 224).
TINY = dict(N=8, M=20, depths=(1, 1, 1, 1), z_channels=8)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def tiny():
    return mambaic.random_model(0, **TINY)


@pytest.fixture(scope="session")
def official_shapes() -> dict:
    """Every key of the official state dict with its shape (2216 entries)."""
    return json.loads((EXPECTED / "official_state_dict.json").read_text())
