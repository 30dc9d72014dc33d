"""`torchrun -m mambaic train` on CPU with two gloo processes: the ranks end with identical
weights, rank 0 alone writes, a run resumes with another number of processes, and ranks whose
weights differ are caught."""

import csv
import os
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from skimage import data

import mambaic
from mambaic.distributed import Ranks, weights_digest

TINY = ["--N", "8", "--M", "20", "--depths", "1,1,1,1", "--z-channels", "8"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "train").mkdir()
    (root / "val").mkdir()
    for name in ("astronaut", "coffee", "rocket", "chelsea", "immunohistochemistry"):
        Image.fromarray(getattr(data, name)()[:200, :200]).save(root / "train" / f"{name}.png")
    Image.fromarray(data.astronaut()[300:390, 200:300]).save(root / "val" / "v.png")
    Image.fromarray(data.coffee()[:100, :130]).save(root / "val" / "w.png")
    Image.fromarray(data.chelsea()[:70, :60]).save(root / "val" / "x.png")
    return root


def _train(folders, out, processes: int, epochs: int, *extra) -> subprocess.CompletedProcess:
    args = [str(folders / "train"), "--val", str(folders / "val"), "--out", str(out), "--lambda", "0.01",
            "--batch-size", "1", "--patch-size", "128", "--max-steps", "2", "--epochs", str(epochs),
            "--device", "cpu", *TINY, *extra]  # fmt: skip
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *launcher, "-m", "mambaic", "train", *args], capture_output=True, text=True,
                          env=env, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _digest_of(checkpoint) -> str:
    model = mambaic.random_model(0, N=8, M=20, depths=(1, 1, 1, 1), z_channels=8)
    model.load_state_dict(torch.load(checkpoint, weights_only=False)["state_dict"])
    return weights_digest(model)


def test_two_ranks_agree_and_a_run_resumes_with_another_count(folders, tmp_path):
    run = tmp_path / "run"
    done = _train(folders, run, 2, 1)
    said = [line for line in done.stdout.splitlines() if line.startswith("epoch 0:")]
    assert len(said) == 1, done.stdout  # rank 0 alone prints
    assert "the 2 ranks hold identical weights (sha256 " in said[0]
    assert _digest_of(run / "checkpoint_last.pth.tar")[:12] in said[0]  # what rank 0 saved is what both hold
    with open(run / "steps.csv") as f:
        assert [r["step"] for r in csv.DictReader(f)] == ["1", "2"]  # written once, not once per rank

    _train(folders, run, 1, 2, "--resume", run / "checkpoint_last.pth.tar")  # two processes, then one
    done = _train(folders, run, 2, 3, "--resume", run / "checkpoint_last.pth.tar")  # and two again
    assert "epoch 2:" in done.stdout and "identical weights" in done.stdout
    state = torch.load(run / "checkpoint_last.pth.tar", weights_only=False)
    assert state["epoch"] == 2 and state["step"] == 6
    with open(run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"] and all(float(r["val_bpp"]) > 0 for r in rows)


def _compare(rank: int, store: str, perturb: bool, results: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    model = mambaic.random_model(0, N=8, M=20, depths=(1, 1, 1, 1), z_channels=8)
    if perturb and rank == 1:
        with torch.no_grad():
            w = next(model.parameters()).view(-1)
            w[0] = torch.nextafter(w[0], torch.tensor(torch.inf))  # one weight, one ulp
    try:
        Ranks(rank, 2, rank).check_identical_weights(model, torch.device("cpu"))
        outcome = "same"
    except RuntimeError as exc:
        outcome = str(exc)
    finally:
        torch.distributed.destroy_process_group()
    with open(f"{results}.{rank}", "w") as f:
        f.write(outcome)


@pytest.mark.parametrize("perturb", [False, True], ids=["identical", "one-weight-differs"])
def test_ranks_with_different_weights_are_caught(tmp_path, perturb):
    results = tmp_path / "outcome"
    mp.spawn(_compare, args=(str(tmp_path / "store"), perturb, str(results)), nprocs=2)
    for rank in (0, 1):
        outcome = (tmp_path / f"outcome.{rank}").read_text()
        if perturb:
            assert "the 2 ranks hold different weights" in outcome
        else:
            assert outcome == "same"
