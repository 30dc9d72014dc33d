"""`mambaic bdrate ANCHOR.json TEST.json ...`: Bjontegaard delta rate and delta PSNR of two curves.

Each file holds results in CompressAI's layout (`mambaic eval --json` writes one point per run;
files with the same name form one curve, e.g. one file per lambda). The first curve named is the
anchor; the result is the test curve's average bitrate change at equal PSNR (negative: fewer
bits) and its average PSNR change at equal bitrate (VCEG-M33's cubic fits, at least 4 points per
curve). --metric ms-ssim uses MS-SSIM instead of PSNR.
"""

from __future__ import annotations

import argparse

from ._model import UserError, run_command


def run(args: argparse.Namespace) -> None:
    from mambaic.rd import METRICS, CurveError, bd_quality, bd_rate, read_curves

    metric = METRICS[args.metric]
    try:
        curves = read_curves(args.files)
        if len(curves) != 2:
            names = ", ".join(repr(c.name) for c in curves)
            raise UserError(f"bdrate compares two curves; the files hold {len(curves)} ({names})")
        anchor, test = curves
        rate, quality = bd_rate(anchor, test, metric), bd_quality(anchor, test, metric)
    except CurveError as exc:
        raise UserError(str(exc)) from None
    unit = " dB" if args.metric == "psnr" else ""
    print(f"anchor {anchor.name!r} ({len(anchor.bpp)} points), test {test.name!r} ({len(test.bpp)} points), {args.metric}")
    print(f"BD-rate: {rate:+.2f}%")
    print(f"BD-{args.metric.upper() if args.metric == 'psnr' else 'MS-SSIM'}: {quality:+.4f}{unit}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mambaic bdrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="result files (JSON, CompressAI's layout)")
    parser.add_argument("--metric", choices=("psnr", "ms-ssim"), default="psnr")
    return run_command(run, parser.parse_args(argv))
