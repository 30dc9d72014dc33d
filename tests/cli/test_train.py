"""`mambaic train`: a few steps on CPU with a tiny model; official checkpoint layout, CSV log,
an exact resume, clear errors."""

import csv

import pytest
import torch
from PIL import Image
from skimage import data

import mambaic
from mambaic.cli import train

from .test_cli import run

TINY = ["--N", "8", "--M", "20", "--depths", "1,1,1,1", "--z-channels", "8"]
OFFICIAL_KEYS = {"epoch", "state_dict", "loss", "optimizer", "aux_optimizer", "lr_scheduler"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "train" / "sub").mkdir(parents=True)
    (root / "val").mkdir()
    Image.fromarray(data.astronaut()[:200, :180]).save(root / "train" / "a.png")
    Image.fromarray(data.coffee()[:150, :300]).save(root / "train" / "sub" / "c.jpg", quality=95)
    Image.fromarray(data.chelsea()[:100, :140]).save(root / "train" / "small.webp")  # smaller than a crop
    Image.fromarray(data.rocket()[:200, :200]).save(root / "train" / "r.png")
    Image.fromarray(data.astronaut()[300:390, 200:300]).save(root / "val" / "v.png")  # 100x90, padded to 128
    return root


def _train(folders, out, *extra):
    return ["--val", folders / "val", "--out", out, "--lambda", "0.01", "--batch-size", "2", "--patch-size", "128",
            "--max-steps", "1", "--device", "cpu", *TINY, *extra]


def test_train_writes_official_checkpoints_and_resumes_exactly(folders, tmp_path, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    code, out, err = run(capsys, train, [folders / "train", *_train(folders, full, "--epochs", "3")])
    assert code == 0, err
    assert "epoch 2: train loss" in out
    state = torch.load(full / "checkpoint_last.pth.tar", weights_only=False)
    assert OFFICIAL_KEYS <= set(state) and state["epoch"] == 2
    model = mambaic.random_model(0, N=8, M=20, depths=(1, 1, 1, 1), z_channels=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state["state_dict"])  # strict: our layout, the official names
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # it learned something
    assert (full / "checkpoint_best.pth.tar").exists()
    with open(full / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"] and all(float(r["val_bpp"]) > 0 for r in rows)

    # two epochs, then a resume to three: the same weights as the uninterrupted run
    assert run(capsys, train, [folders / "train", *_train(folders, part, "--epochs", "2")])[0] == 0
    code, out, err = run(capsys, train, [folders / "train", *_train(folders, part, "--epochs", "3", "--resume",
                                                                     part / "checkpoint_last.pth.tar")])
    assert code == 0, err
    resumed = torch.load(part / "checkpoint_last.pth.tar", weights_only=False)
    for k, v in state["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][k], v, rtol=0, atol=0, msg=k)
    with open(part / "log.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1", "2"]


def test_train_errors(folders, tmp_path, capsys):
    code, _, err = run(capsys, train, [folders / "train", *_train(folders, tmp_path / "o", "--patch-size", "100")])
    assert code == 1 and "--patch-size must be a multiple of 128" in err
    code, _, err = run(capsys, train, [tmp_path / "nothing", *_train(folders, tmp_path / "o")])
    assert code == 1 and "not a folder" in err
    code, _, err = run(capsys, train, [folders / "train", *_train(folders, tmp_path / "o", "--batch-size", "9")])
    assert code == 1 and "4 images, fewer than one batch of 9" in err
    code, _, err = run(capsys, train, [folders / "train", *_train(folders, tmp_path / "o", "--cuda-graphs", "--device", "cpu")])
    assert code == 1 and "--cuda-graphs needs a GPU (--device cuda), got --device cpu" in err
