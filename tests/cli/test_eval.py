"""`mambaic eval`: every image of a folder really coded, measured, written to CSV / JSON; bad files skipped."""

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image
from skimage import data

import mambaic
from mambaic.cli import eval as eval_cli
from mambaic.codec import encode_image
from mambaic.image import read_image

from .test_cli import TINY_ARGS, run


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.astronaut()[100:170, 150:261]).save(root / "astronaut.png")  # 111x70
    (root / "more").mkdir()
    Image.fromarray(data.coffee()[50:250, 300:480]).save(root / "more" / "coffee.jpg", quality=95)  # 180x200
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "notes.txt").write_text("not an image: ignored by its extension")
    return root


def test_eval_codes_every_image_and_skips_a_broken_one(folder, tmp_path, capsys):
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    code, out, err = run(capsys, eval_cli, [folder, *TINY_ARGS, "--json", out_json, "--csv", out_csv])
    assert code == 0, err
    assert "Warning: broken.png: skipped (" in err and "not a readable image" in err
    assert out.startswith("2 images (real .mic files; 1 skipped), precision fp32, device cpu")
    record = json.loads(out_json.read_text())
    rows = {r["image"]: r for r in record["images"]}
    assert set(rows) == {"astronaut.png", "more/coffee.jpg"} and record["skipped"][0]["image"] == "broken.png"
    # bpp is the real file's size: the same as encoding the image again (same model, same machine)
    model = mambaic.random_model(3, N=8, M=20, depths=(1, 1, 1, 1), z_channels=8)
    x = read_image(folder / "astronaut.png")
    assert rows["astronaut.png"]["bpp"] == pytest.approx(8 * len(encode_image(model, x).data) / (111 * 70))
    assert (rows["astronaut.png"]["width"], rows["astronaut.png"]["height"]) == (111, 70)
    for r in rows.values():
        assert r["bpp"] > 0 and math.isfinite(r["psnr"]) and r["encode_s"] > 0 and r["decode_s"] > 0
    assert rows["astronaut.png"]["ms_ssim"] is None  # 70 pixels: too small for MS-SSIM's 5 scales
    assert 0 < rows["more/coffee.jpg"]["ms_ssim"] <= 1
    assert record["average"]["bpp"] == pytest.approx(np.mean([r["bpp"] for r in rows.values()]))
    with open(out_csv) as f:
        table = list(csv.DictReader(f))
    assert [r["image"] for r in table] == ["astronaut.png", "more/coffee.jpg"]
    assert "average" in out.splitlines()[-1]


def test_estimate_mode_codes_nothing(folder, tmp_path, capsys):
    out_json = tmp_path / "e.json"
    code, out, err = run(capsys, eval_cli, [folder, *TINY_ARGS, "--estimate", "--json", out_json])
    assert code == 0, err
    record = json.loads(out_json.read_text())
    assert record["estimate"] and all(r["decode_s"] is None and r["bpp"] > 0 for r in record["images"])


def test_eval_errors(tmp_path, capsys):
    code, _, err = run(capsys, eval_cli, [tmp_path / "none", *TINY_ARGS])
    assert code == 1 and err.strip() == f"Error: {tmp_path / 'none'}: not a folder"
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, eval_cli, [tmp_path / "empty", *TINY_ARGS])
    assert code == 1 and "no images (" in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"junk")
    code, _, err = run(capsys, eval_cli, [tmp_path / "bad", *TINY_ARGS])
    assert code == 1 and "none of the 1 images could be evaluated" in err
    code, _, err = run(capsys, eval_cli, [tmp_path / "bad", *TINY_ARGS, "--cuda-graphs", "--device", "cpu"])
    assert code == 1 and "--cuda-graphs needs a GPU (--device cuda), got --device cpu" in err
