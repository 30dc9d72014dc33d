"""bench/train_step.py times the official training step per backend on CPU with a tiny model."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import train_step  # noqa: E402


def test_train_step_tiny_cpu(tmp_path, capsys):
    out = tmp_path / "step.json"
    rc = train_step.main(["--device", "cpu", "--backend", "torch", "cpu", "--config", "8,20,1,1,1,1", "--batch", "2",
                          "--patch", "128", "--warmup", "1", "--iters", "1", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["machine"]["batch"] == 2 and data["machine"]["patch"] == 128
    assert [r["backend"] for r in data["results"]] == ["torch", "cpu"]
    for r in data["results"]:
        assert r["median_ms"] > 0 and r["peak_mib"] > 0 and r["steps"] == 1
    assert "| torch |" in capsys.readouterr().out


def test_bad_patch_is_refused(capsys):
    with pytest.raises(SystemExit):
        train_step.main(["--device", "cpu", "--patch", "100"])
    assert "--patch must be a multiple of 128" in capsys.readouterr().err
