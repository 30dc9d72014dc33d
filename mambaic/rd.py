"""Rate-distortion curves: reading result files, and the Bjontegaard deltas between two curves.

A result file is JSON in CompressAI's layout, ``{"name": ..., "results": {"bpp": [...],
"psnr-rgb": [...], "ms-ssim-rgb": [...]}}`` (one point per model, e.g. per lambda), which
`mambaic eval --json` writes and CompressAI's published curves use. Files with the same name are
one curve: evaluate each checkpoint of a method with the same ``--name``.

Bjontegaard delta (VCEG-M33): fit a cubic polynomial through each curve, log10(rate) as a function
of PSNR for the delta rate and PSNR as a function of log10(rate) for the delta PSNR, and average
the difference of the two fits over the interval where both curves have points.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

METRICS = {"psnr": "psnr-rgb", "ms-ssim": "ms-ssim-rgb"}


@dataclass
class Curve:
    name: str
    bpp: np.ndarray
    quality: dict  # metric name ("psnr-rgb", ...) -> values, sorted with bpp


class CurveError(ValueError):
    """A result file or curve that cannot be used (the message names the file and why)."""


def read_curves(paths: list[str]) -> list[Curve]:
    """The curves in ``paths``, in the order their names first appear; same-named files merge."""
    points: dict[str, list[dict]] = {}
    for path in paths:
        try:
            record = json.loads(Path(path).read_text())
            name, results = record["name"], record["results"]
            bpp = list(results["bpp"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CurveError(f"{path}: not a result file with name and results.bpp ({exc})") from None
        for i, rate in enumerate(bpp):
            points.setdefault(str(name), []).append(
                {"bpp": float(rate), **{k: float(v[i]) for k, v in results.items() if k != "bpp" and v and v[i] is not None}}
            )
    curves = []
    for name, pts in points.items():
        pts.sort(key=lambda p: p["bpp"])
        keys = set.intersection(*(set(p) for p in pts)) - {"bpp"}
        curves.append(Curve(name, np.array([p["bpp"] for p in pts]), {k: np.array([p[k] for p in pts]) for k in sorted(keys)}))
    return curves


def _check(curve: Curve, metric: str) -> np.ndarray:
    if metric not in curve.quality:
        raise CurveError(f"curve {curve.name!r} has no {metric} values")
    if len(curve.bpp) < 4:
        raise CurveError(f"curve {curve.name!r} has {len(curve.bpp)} points; the Bjontegaard delta needs at least 4")
    if np.any(curve.bpp <= 0):
        raise CurveError(f"curve {curve.name!r} has a non-positive bpp")
    return curve.quality[metric]


def _mean_difference(x_a, y_a, x_b, y_b) -> float:
    """Mean of (fit_b - fit_a) over the overlap of x, each fit a cubic of y against x."""
    lo, hi = max(x_a.min(), x_b.min()), min(x_a.max(), x_b.max())
    if hi <= lo:
        raise CurveError("the two curves do not overlap")
    fit_a, fit_b = np.polyint(np.polyfit(x_a, y_a, 3)), np.polyint(np.polyfit(x_b, y_b, 3))
    area = (np.polyval(fit_b, hi) - np.polyval(fit_b, lo)) - (np.polyval(fit_a, hi) - np.polyval(fit_a, lo))
    return float(area / (hi - lo))


def bd_rate(anchor: Curve, test: Curve, metric: str = "psnr-rgb") -> float:
    """Average bitrate change of ``test`` against ``anchor`` at equal quality, in percent
    (negative: test needs fewer bits)."""
    qa, qt = _check(anchor, metric), _check(test, metric)
    return (10 ** _mean_difference(qa, np.log10(anchor.bpp), qt, np.log10(test.bpp)) - 1) * 100


def bd_quality(anchor: Curve, test: Curve, metric: str = "psnr-rgb") -> float:
    """Average quality change of ``test`` against ``anchor`` at equal bitrate (dB for PSNR)."""
    qa, qt = _check(anchor, metric), _check(test, metric)
    return _mean_difference(np.log10(anchor.bpp), qa, np.log10(test.bpp), qt)
