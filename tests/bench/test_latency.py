"""bench/latency.py runs on CPU at a tiny size and writes the JSON fields users and plots rely on."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import latency  # noqa: E402


def test_latency_tiny_cpu(tmp_path, capsys):
    out = tmp_path / "lat.json"
    rc = latency.main(["--res", "128x128", "--device", "cpu", "--backend", "torch", "--config", "8,10,0,0,1,0",
                       "--warmup", "0", "--iters", "1", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    for key in ("device", "torch", "triton", "cuda", "commit", "dtype", "batch", "command"):
        assert key in data["machine"], key
    (res,) = data["results"]
    assert (res["name"], res["width"], res["height"], res["padded"]) == ("128x128", 128, 128, [128, 128])
    (rec,) = res["backends"]
    assert rec["backend"] == "torch"
    for stage in ("forward", "compress", "decompress"):
        assert rec[stage]["p50_ms"] > 0 and rec[stage]["runs"] == 1 and rec[stage]["peak_mib"] > 0
    assert set(rec["modules_ms"]) == {"analysis", "hyperprior", "synthesis", "context model", "total"}
    assert set(rec["ops_pct"]) == {"scan", "cross-scan/merge", "window attention", "rest"}
    assert rec["ops_pct"]["scan"] > 0
    table = capsys.readouterr().out
    assert "| 128x128 128x128 | torch |" in table


def test_bad_resolution_is_refused(capsys):
    with pytest.raises(SystemExit):
        latency.main(["--res", "big"])
    assert "--res: 'big' is not a resolution" in capsys.readouterr().err
