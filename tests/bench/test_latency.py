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
    for key in ("device", "torch", "triton", "cuda", "commit", "precision", "batch", "command"):
        assert key in data["machine"], key
    (res,) = data["results"]
    assert (res["name"], res["width"], res["height"], res["padded"]) == ("128x128", 128, 128, [128, 128])
    (rec,) = res["backends"]
    assert rec["backend"] == "torch"
    for stage in ("forward", "compress", "decompress"):
        assert rec[stage]["p50_ms"] > 0 and rec[stage]["runs"] == 1 and rec[stage]["peak_mib"] > 0
    assert set(rec["modules_ms"]) == {"analysis", "hyperprior", "synthesis", "context model", "total"}
    assert set(rec["ops_pct"]) == {"ss2d core", "window attention", "rest", "of which scan"}
    assert 0 < rec["ops_pct"]["of which scan"] < rec["ops_pct"]["ss2d core"]
    table = capsys.readouterr().out
    assert "| 128x128 128x128 | torch |" in table


def test_bad_resolution_is_refused(capsys):
    with pytest.raises(SystemExit):
        latency.main(["--res", "big"])
    assert "--res: 'big' is not a resolution" in capsys.readouterr().err


def test_forward_stage_only_and_plot(tmp_path, capsys):
    out, png = tmp_path / "lat.json", tmp_path / "lat.png"
    rc = latency.main(["--res", "128x128", "--device", "cpu", "--backend", "torch", "--config", "8,10,0,0,1,0",
                       "--warmup", "0", "--iters", "1", "--stages", "forward", "--json", str(out), "--plot", str(png)])
    assert rc == 0
    (rec,) = json.loads(out.read_text())["results"][0]["backends"]
    assert rec["forward"]["runs"] == 1
    assert "compress" not in rec and "decompress" not in rec
    assert png.stat().st_size > 10_000
    assert "| 128x128 128x128 | torch |" in capsys.readouterr().out


def test_decompress_needs_compress(capsys):
    with pytest.raises(SystemExit):
        latency.main(["--res", "128x128", "--device", "cpu", "--stages", "decompress"])
    assert "decompress decodes the strings that compress writes" in capsys.readouterr().err


def test_commit_is_marked_when_the_tree_differs(monkeypatch, tmp_path):
    import subprocess

    from bench import timing

    monkeypatch.setenv("MAMBAIC_COMMIT", "abc1234")
    assert timing.git_commit(tmp_path) == "abc1234"
    monkeypatch.delenv("MAMBAIC_COMMIT")
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=tmp_path,  # noqa: E731
                                    check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / "f.py").write_text("a = 1\n")
    git("add", "f.py")
    git("commit", "-qm", "one")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert timing.git_commit(tmp_path) == head
    (tmp_path / "f.py").write_text("a = 2\n")
    assert timing.git_commit(tmp_path) == head + "+modified"


def test_size_that_cannot_fit_is_skipped_with_a_reason(tmp_path, monkeypatch, capsys):
    """A size whose expected peak exceeds the free memory is skipped, saying what it needs, before
    the kernel can kill the run for memory."""
    monkeypatch.setattr(latency, "available_mib", lambda device: 100.0)
    out = tmp_path / "lat.json"
    rc = latency.main(["--res", "2K", "--device", "cpu", "--backend", "torch", "--config", "8,10,0,0,1,0",
                       "--stages", "forward", "--json", str(out)])
    assert rc == 0
    (rec,) = json.loads(out.read_text())["results"][0]["backends"]
    assert rec["forward"] == "skipped (needs about 42.9 GiB, 0.1 GiB available)"
    err = capsys.readouterr().err
    assert "2K 2048x1536 torch: skipped: a forward needs about 42.9 GiB" in err
    assert "try --backend cpu, --res kodak or a smaller WxH (--ignore-memory-estimate runs it anyway)" in err


def test_precisions_side_by_side(tmp_path, capsys):
    out = tmp_path / "lat.json"
    rc = latency.main(["--res", "128x128", "--device", "cpu", "--backend", "torch", "--config", "8,10,0,0,1,0",
                       "--warmup", "0", "--iters", "1", "--stages", "forward", "--profile-limit", "0",
                       "--precision", "fp32", "bf16", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["machine"]["precision"] == "fp32 bf16"
    assert [(r["backend"], r["precision"]) for r in data["results"][0]["backends"]] == [("torch", "fp32"), ("torch", "bf16")]
    table = capsys.readouterr().out
    assert "| 128x128 128x128 | torch |" in table and "| 128x128 128x128 | torch bf16 |" in table


def test_cuda_graphs_need_a_gpu(capsys):
    with pytest.raises(SystemExit):
        latency.main(["--res", "128x128", "--device", "cpu", "--cuda-graphs"])
    assert "--cuda-graphs: CUDA graphs need a GPU (--device cuda)" in capsys.readouterr().err


def test_stage_cells_show_gpu_kernel_time_where_measured():
    wall = {"p50_ms": 12.34, "p20_ms": 12.0, "p80_ms": 13.0}
    assert latency.fmt_stage(wall) == "12.3 (12.0-13.0)"  # a CPU run: no kernel time
    assert latency.fmt_stage({**wall, "kernel_ms": 8.76}) == "12.3 (12.0-13.0) [GPU 8.8]"
    assert latency.fmt_stage("OOM") == "OOM"
