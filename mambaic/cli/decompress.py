"""`mambaic decompress IN.mic OUT.png --checkpoint CKPT`: decode a .mic file into a PNG.

The file is checked (magic, version, CRCs, sizes) before the model is built, and refused if it
was encoded with other weights. With --random-init, unset size options default to the ones
recorded in the file.
"""

from __future__ import annotations

import argparse
import os
import time

from ._model import UserError, add_model_arguments, build_model, run_command


def run(args: argparse.Namespace) -> None:
    from mambaic.codec import MicFormatError, WeightsMismatchError, decode_image, read_mic, weights_fingerprint
    from mambaic.image import write_png
    from mambaic_kernels import BackendUnavailableError

    try:
        with open(args.input, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UserError(f"{args.input}: cannot read ({exc.strerror or exc})") from None
    try:
        mic = read_mic(data, os.fspath(args.input))
    except MicFormatError as exc:
        raise UserError(str(exc)) from None

    t0 = time.perf_counter()
    recorded = dict(N=mic.N, M=mic.M, depths=mic.depths, num_slices=mic.num_slices, z_channels=mic.z_channels)
    model = build_model(args, defaults=recorded)
    model.update()
    fingerprint = weights_fingerprint(model)
    t1 = time.perf_counter()
    try:
        x_hat, _ = decode_image(model, mic, os.fspath(args.input), fingerprint)
    except (WeightsMismatchError, MicFormatError, BackendUnavailableError) as exc:
        raise UserError(str(exc)) from None
    if args.device == "cuda":
        import torch

        torch.cuda.synchronize()
    t2 = time.perf_counter()
    try:
        write_png(args.output, x_hat)
    except OSError as exc:
        raise UserError(f"{args.output}: cannot write ({exc})") from None
    print(f"{args.input} -> {args.output}: {mic.width}x{mic.height}")
    print(f"time: model {t1 - t0:.2f} s, decode {t2 - t1:.2f} s on {args.device}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mambaic decompress", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="a .mic file written by `mambaic compress`")
    parser.add_argument("output", help="the PNG to write (atomically)")
    add_model_arguments(parser)
    return run_command(run, parser.parse_args(argv))
