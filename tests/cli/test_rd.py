"""Rate-distortion tools: Bjontegaard deltas against values computed by hand, `mambaic bdrate`
and `mambaic plot` on result files in CompressAI's layout."""

import json
import math

import numpy as np
import pytest

from mambaic.cli import bdrate, plot
from mambaic.rd import Curve, CurveError, bd_quality, bd_rate

from .test_cli import run

PSNR = np.array([30.0, 32.0, 34.0, 36.0, 38.0])


def curve(name, bpp, psnr):
    return Curve(name, np.asarray(bpp, float), {"psnr-rgb": np.asarray(psnr, float)})


def test_constant_shifts():
    anchor = curve("a", [0.2, 0.35, 0.6, 1.0, 1.6], PSNR)
    # 10% fewer bits at every PSNR: -10% exactly; 0.5 dB more at every rate: +0.5 dB exactly
    assert bd_rate(anchor, curve("b", anchor.bpp * 0.9, PSNR)) == pytest.approx(-10.0, abs=1e-9)
    assert bd_quality(anchor, curve("c", anchor.bpp, PSNR + 0.5)) == pytest.approx(0.5, abs=1e-9)


def test_curves_computed_by_hand():
    # log10 R = (D - 30) / 10 - 1 against (D - 28) / 10 - 1: over the common D in [32, 36] the test
    # curve needs 10^0.2 times the bits, and at a common rate it is 2 dB worse
    a_psnr, b_psnr = np.array([30.0, 32, 34, 36]), np.array([32.0, 34, 36, 38, 40])
    a = curve("a", 10 ** ((a_psnr - 30) / 10 - 1), a_psnr)
    b = curve("b", 10 ** ((b_psnr - 28) / 10 - 1), b_psnr)
    assert bd_rate(a, b) == pytest.approx((10**0.2 - 1) * 100, abs=1e-9)  # +58.489%
    assert bd_quality(a, b) == pytest.approx(-2.0, abs=1e-9)
    # log10 R = t^2 - 1 against 0.9 t^2 - 1, t = (D - 30) / 10 on D in [30, 38]: the mean log-rate
    # difference is -0.1 * mean(t^2) = -0.1 * 0.8^2 / 3, so BD-rate = 10^(-0.064 / 3) - 1
    t = (PSNR - 30) / 10
    a, b = curve("a", 10 ** (t**2 - 1), PSNR), curve("b", 10 ** (0.9 * t**2 - 1), PSNR)
    assert bd_rate(a, b) == pytest.approx((math.pow(10, -0.064 / 3) - 1) * 100, abs=1e-9)  # -4.7935%


def test_refusals():
    a = curve("a", [0.2, 0.35, 0.6, 1.0, 1.6], PSNR)
    with pytest.raises(CurveError, match="curve 'b' has 3 points; the Bjontegaard delta needs at least 4"):
        bd_rate(a, curve("b", [0.2, 0.3, 0.4], [30, 31, 32]))
    with pytest.raises(CurveError, match="the two curves do not overlap"):
        bd_rate(a, curve("b", [0.2, 0.35, 0.6, 1.0], [50, 51, 52, 53]))


def _write_points(folder, name, bpp, psnr, ms_ssim=None):
    """One file per point, as `mambaic eval --json --name NAME` writes them."""
    paths = []
    for i, (r, q) in enumerate(zip(bpp, psnr)):
        results = {"bpp": [r], "psnr-rgb": [q], "ms-ssim-rgb": [None if ms_ssim is None else ms_ssim[i]]}
        path = folder / f"{name}_{i}.json"
        path.write_text(json.dumps({"name": name, "results": results}))
        paths.append(path)
    return paths


def test_bdrate_and_plot_commands(tmp_path, capsys):
    bpp = [0.2, 0.35, 0.6, 1.0, 1.6]
    anchor = _write_points(tmp_path, "anchor", bpp, PSNR, [0.95, 0.96, 0.97, 0.98, 0.99])
    test = tmp_path / "test.json"  # a whole curve in one file, CompressAI's published layout
    test.write_text(json.dumps({"name": "test", "results": {"bpp": [r * 0.9 for r in bpp], "psnr-rgb": list(PSNR)}}))
    code, out, err = run(capsys, bdrate, [*anchor, test])
    assert code == 0, err
    assert "anchor 'anchor' (5 points), test 'test' (5 points), psnr" in out and "BD-rate: -10.00%" in out
    bd_psnr = float(out.split("BD-PSNR: ")[1].split()[0])
    assert 0 < bd_psnr < 1  # fewer bits at every PSNR: better at every rate
    png = tmp_path / "rd.png"
    code, out, err = run(capsys, plot, [*anchor, test, "-o", png])
    assert code == 0 and png.stat().st_size > 10_000 and f"{png}: 2 curves" in out
    code, _, err = run(capsys, bdrate, [*anchor])
    assert code == 1 and "bdrate compares two curves; the files hold 1 ('anchor')" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    code, _, err = run(capsys, bdrate, [bad, test])
    assert code == 1 and err.startswith(f"Error: {bad}: not a result file with name and results.bpp")
