"""`mambaic plot A.json B.json ... -o rd.png`: rate-distortion curves of result files.

Each file holds results in CompressAI's layout (`mambaic eval --json` writes them; CompressAI's
published curves use it too); files with the same name form one curve. Draws PSNR (and MS-SSIM
in dB, -10 log10(1 - MS-SSIM), where every curve has it) against bits per pixel.
"""

from __future__ import annotations

import argparse

import numpy as np

from ._model import UserError, run_command


def run(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mambaic.rd import CurveError, read_curves

    try:
        curves = read_curves(args.files)
    except CurveError as exc:
        raise UserError(str(exc)) from None
    panels = [("psnr-rgb", "PSNR (dB)", lambda v: v)]
    if all("ms-ssim-rgb" in c.quality for c in curves):
        panels.append(("ms-ssim-rgb", "MS-SSIM (dB)", lambda v: -10 * np.log10(1 - v)))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (key, label, transform) in zip(axes[0], panels):
        for c in curves:
            if key in c.quality:
                ax.plot(c.bpp, transform(c.quality[key]), "o-", label=c.name)
        ax.set(xlabel="bits per pixel", ylabel=label, title=args.title or "rate-distortion")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(args.output, dpi=120)
    except OSError as exc:
        raise UserError(f"{args.output}: cannot write ({exc.strerror or exc})") from None
    print(f"{args.output}: {len(curves)} curves")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mambaic plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="result files (JSON, CompressAI's layout)")
    parser.add_argument("-o", "--output", required=True, help="the image to write (png, pdf, svg)")
    parser.add_argument("--title")
    return run_command(run, parser.parse_args(argv))
