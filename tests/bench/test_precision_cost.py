"""bench/precision_cost.py runs on CPU with a tiny model and reports every precision against fp32."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import precision_cost  # noqa: E402


def test_precision_cost_tiny_cpu(tmp_path, capsys):
    out = tmp_path / "cost.json"
    rc = precision_cost.main(["--device", "cpu", "--config", "8,20,1,1,1,1", "--sizes", "128x128",
                              "--precision", "tf32", "bf16", "--json", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["photo"], r["precision"]) for r in rows] == [
        (p, q) for p in ("astronaut", "coffee", "chelsea") for q in ("tf32", "bf16")
    ]
    for r in rows:
        if r["precision"] == "tf32":  # no TF32 on a CPU: fp32's bits
            assert r["psnr_vs_fp32_db"] == float("inf") and r["actual_bpp"] == r["actual_bpp_fp32"]
        else:
            assert 30 < r["psnr_vs_fp32_db"] < float("inf") and r["actual_bpp"] > 0
    table = capsys.readouterr().out
    assert "| tf32 | inf / inf | inf / inf | 0.00% / 0.00% | 0.00% / 0.00% | 0.00% / 0.00% |" in table
    assert "| bf16 |" in table
