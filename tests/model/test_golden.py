"""Golden outputs of the tiny model on a real photograph, so an unintended change of the numerics
(a layer order, an initialisation, a kernel) shows up. Regenerate only on purpose:
GENERATE_EXPECTED=1 pytest tests/model/test_golden.py (a missing file is a failure)."""

import json
import os

import torch
from skimage import data

import mambaic

from .conftest import EXPECTED, TINY

GOLDEN = EXPECTED / "tiny_model_forward.json"


def _summary() -> dict:
    model = mambaic.random_model(0, **TINY)
    rgb = data.astronaut()[100:228, 150:278]  # 128x128: the smallest size the model takes
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        out = model(x)
    bits = {k: float(-torch.log2(v).sum()) for k, v in out["likelihoods"].items()}
    x_hat = out["x_hat"].double()
    return {
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()},
        "seed": 0,
        "image": "skimage.data.astronaut()[100:228, 150:278]",
        "bits_y": bits["y"],
        "bits_z": bits["z"],
        "x_hat_mean": float(x_hat.mean()),
        "x_hat_std": float(x_hat.std()),
        "x_hat_first_row": [round(float(v), 6) for v in x_hat[0, :, 0, :4].reshape(-1)],
    }


def test_tiny_model_matches_golden_file():
    got = _summary()
    if os.environ.get("GENERATE_EXPECTED") == "1":
        GOLDEN.write_text(json.dumps(got, indent=1) + "\n")
    assert GOLDEN.exists(), f"{GOLDEN} is missing; create it with GENERATE_EXPECTED=1"
    want = json.loads(GOLDEN.read_text())
    assert got["config"] == want["config"] and got["image"] == want["image"]
    for key in ("bits_y", "bits_z", "x_hat_mean", "x_hat_std"):
        tolerance = 1e-4 * max(1.0, abs(want[key]))
        assert abs(got[key] - want[key]) <= tolerance, f"{key}: got {got[key]}, golden {want[key]}"
    for i, (g, w) in enumerate(zip(got["x_hat_first_row"], want["x_hat_first_row"])):
        assert abs(g - w) <= 1e-4, f"x_hat_first_row[{i}]: got {g}, golden {w}"
