"""Dispatch: the variable is read per call, use_backend overrides it, errors say why and what's possible."""

import pytest
import torch

import mambaic_kernels as mk
from mambaic_kernels import _backend


def test_unknown_backend_lists_choices(monkeypatch):
    monkeypatch.setenv("MAMBAIC_BACKEND", "nonsense")
    with pytest.raises(ValueError, match=r"MAMBAIC_BACKEND='nonsense' is not a backend; choose one of torch\|triton\|cuda\|cpu\|vmamba\|auto"):
        mk.cross_scan(torch.randn(1, 2, 3, 4))
    with pytest.raises(ValueError, match="use_backend: 'fast' is not a backend"):
        with mk.use_backend("fast"):
            pass


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_on_cpu_machine_says_why(monkeypatch):
    monkeypatch.setenv("MAMBAIC_BACKEND", "cuda")
    with pytest.raises(mk.BackendUnavailableError) as info:
        mk.selective_scan(torch.randn(1, 4, 5), torch.rand(1, 4, 5), -torch.rand(4, 2),
                          torch.randn(1, 4, 2, 5), torch.randn(1, 4, 2, 5))
    msg = str(info.value)
    assert "MAMBAIC_BACKEND=cuda" in msg and "the cuda backend failed to load" in msg
    assert "needs a CUDA GPU" in msg
    assert "backends available for this selective_scan call: torch" in msg  # (and cpu when it compiles)


def test_variable_is_read_at_call_time(monkeypatch):
    x = torch.randn(1, 2, 3, 4)
    monkeypatch.setenv("MAMBAIC_BACKEND", "torch")
    mk.cross_scan(x)
    monkeypatch.setenv("MAMBAIC_BACKEND", "vmamba")
    with pytest.raises(mk.BackendUnavailableError, match="MAMBAIC_BACKEND=vmamba"):
        mk.cross_scan(x)


def test_use_backend_overrides_variable(monkeypatch):
    monkeypatch.setenv("MAMBAIC_BACKEND", "vmamba")
    with mk.use_backend("torch"):
        assert mk.cross_scan(torch.randn(1, 2, 3, 4)).shape == (1, 4, 2, 12)
    assert _backend.requested() == ("vmamba", "MAMBAIC_BACKEND=vmamba")


def test_auto_picks_an_available_backend(monkeypatch):
    monkeypatch.delenv("MAMBAIC_BACKEND", raising=False)
    x = torch.randn(1, 2, 3, 4)
    fn = _backend.resolve("selective_scan", device="cpu", dtype=torch.float64, d_state=4)
    assert fn is _backend._registry["selective_scan"]["torch"].fn  # only torch takes float64 on CPU
    assert mk.cross_scan(x).shape == (1, 4, 2, 12)


def test_auto_order_is_per_op_where_measured(monkeypatch):
    """On CUDA tensors auto prefers cuda for the scans and cross_scan, and triton for the ops whose cuda kernels
    measured slower (AUTO_ORDER_BY_OP), with every backend able to take the call (stand-ins)."""
    monkeypatch.delenv("MAMBAIC_BACKEND", raising=False)
    monkeypatch.setattr(_backend, "_load", lambda backend: None)
    for op in _backend.OPS:
        table = {b: _backend.Implementation(fn=lambda *a: None, supports=lambda **meta: None)
                 for b in ("cuda", "triton", "torch")}
        monkeypatch.setitem(_backend._registry, op, table)
    picked = {op: _backend._choose(op, device="cuda", dtype=torch.float32) for op in _backend.OPS}
    assert picked == {"cross_scan": "cuda", "cross_merge": "triton", "window_attention": "triton",
                      "selective_scan": "cuda", "ss2d_core": "cuda"}
    assert _backend.auto_order("window_attention", "cpu") == _backend.AUTO_ORDER["cpu"]  # CPU: no exception
    with mk.use_backend("cuda"):  # an explicit request still gets cuda
        assert _backend._choose("window_attention", device="cuda", dtype=torch.float32) == "cuda"


def test_info_reports_every_backend(capsys):
    from mambaic.cli.main import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in _backend.BACKENDS:
        assert f"  {name}" in out
    assert "torch" in out and "triton" in out


def test_use_backend_per_op_and_recording(monkeypatch):
    monkeypatch.setenv("MAMBAIC_BACKEND", "vmamba")
    x = torch.randn(1, 2, 3, 4)
    with mk.use_backend({"cross_scan": "torch"}), _backend.recording() as used:
        mk.cross_scan(x)
        with pytest.raises(mk.BackendUnavailableError, match="MAMBAIC_BACKEND=vmamba"):
            mk.cross_merge(torch.randn(1, 4, 2, 3, 4))  # not named: the variable decides
    assert used == {"cross_scan": ["torch"]}
    # a per-op choice inside a whole-model one keeps the outer choice for the other ops
    with mk.use_backend("torch"), mk.use_backend({"cross_scan": "torch"}), _backend.recording() as outer:
        with _backend.recording() as inner:
            mk.cross_merge(torch.randn(1, 4, 2, 3, 4))
    assert inner == outer == {"cross_merge": ["torch"]}, "recordings nest"
    assert _backend.requested("cross_scan") == ("vmamba", "MAMBAIC_BACKEND=vmamba")
    with pytest.raises(ValueError, match="use_backend: 'scan' is not an op"):
        with mk.use_backend({"scan": "torch"}):
            pass
    with pytest.raises(ValueError, match="use_backend: 'fast' is not a backend"):
        with mk.use_backend({"cross_scan": "fast"}):
            pass


def test_first_build_is_announced(tmp_path, monkeypatch, capsys):
    """A backend that compiles on first use says so before the silent minute, and only then."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    _backend.announce_build("cpu", "some_extension", 60)
    assert "compiling the cpu backend's kernels for this machine (about 60 s, once" in capsys.readouterr().err
    (tmp_path / "some_extension" / "some_extension.so").write_bytes(b"")
    _backend.announce_build("cpu", "some_extension", 60)
    assert capsys.readouterr().err == ""
    _backend.announce_build("rans", "other_extension", 60, what="the C++ rANS entropy coder")
    assert "compiling the C++ rANS entropy coder for this machine (about 60 s, once" in capsys.readouterr().err
