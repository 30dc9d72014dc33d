"""`mambaic decompress IN.mic OUT.png --checkpoint CKPT`: decode a .mic file into a PNG.

The file is checked (magic, version, CRCs, sizes) before the model is built, and refused if it
was encoded with other weights. By default the decoder follows the encoder: the device, the
backend of each op (when MAMBAIC_BACKEND is unset or auto) and the CPU thread count recorded in
the file, where this machine has them. Each part of the latent is checked against the encoder's
checksum as soon as it is decoded; on a mismatch the command stops, says what differs between
the two platforms, and writes nothing. With --random-init, unset size options default to the
ones recorded in the file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

from mambaic.codec.image_codec import DEFAULT_MAX_PIXELS
from mambaic.precision import PRECISIONS

from ._model import (
    UserError,
    _positive,
    add_model_arguments,
    build_model,
    check_output,
    resolve_device,
    resolve_threads,
    run_command,
)
from .compress import sync


def run(args: argparse.Namespace) -> None:
    from mambaic.codec import (
        ImageTooLargeError,
        LatentMismatchError,
        MicFormatError,
        ModelMismatchError,
        decode_image,
        check_size,
        read_mic,
        weights_fingerprint,
    )
    from mambaic.codec.platform import describe
    from mambaic.image import write_png
    from mambaic_kernels import BackendUnavailableError

    check_output(args.output, args.force, [args.input])
    if os.path.isdir(args.input):
        raise UserError(f"{args.input}: is a folder, not a .mic file")
    try:
        with open(args.input, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UserError(f"{args.input}: cannot read ({exc.strerror or exc})") from None
    try:
        mic = read_mic(data, os.fspath(args.input))
        check_size(mic, args.max_pixels, os.fspath(args.input))  # before the model or any map is built
    except (MicFormatError, ImageTooLargeError) as exc:
        raise UserError(str(exc)) from None

    recorded = mic.platform or {}
    # version 1 files record no device; `mambaic compress` then ran on the CPU unless told otherwise
    device = resolve_device(args, recorded.get("device", "cpu"))
    if device == "cpu" and recorded.get("device") == "cpu":
        resolve_threads(args, recorded.get("threads"))
    else:
        resolve_threads(args)
    t0 = time.perf_counter()
    sizes = dict(N=mic.N, M=mic.M, depths=mic.depths, num_slices=mic.num_slices, z_channels=mic.z_channels)
    precision = recorded.get("precision")
    model = build_model(args, device, defaults=sizes, precision=precision if precision in PRECISIONS else None)
    model.update()
    fingerprint = weights_fingerprint(model)
    t1 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            x_hat, _ = decode_image(model, mic, os.fspath(args.input), fingerprint, max_pixels=None)  # checked above
    except (ModelMismatchError, MicFormatError, LatentMismatchError, BackendUnavailableError) as exc:
        raise UserError(f"{exc}\nNothing was written.") from None
    for w in caught:
        print(f"Warning: {w.message}", file=sys.stderr)
    sync(device)
    t2 = time.perf_counter()
    try:
        write_png(args.output, x_hat)
    except OSError as exc:
        raise UserError(f"{args.output}: cannot write ({exc})") from None
    print(f"{args.input} -> {args.output}: {mic.width}x{mic.height}")
    if mic.verifiable:
        print(f"verified: the {1 + 2 * mic.num_slices} latent parts match the encoder's checksums")
        print(f"encoded with {describe(recorded)}")
    print(f"time: model {t1 - t0:.2f} s, decode {t2 - t1:.2f} s on {device}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mambaic decompress", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="a .mic file written by `mambaic compress`")
    parser.add_argument("output", help="the PNG to write (atomically)")
    parser.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    parser.add_argument("--max-pixels", type=_positive, default=DEFAULT_MAX_PIXELS, metavar="P",
                        help=f"refuse a file that declares more pixels (default {DEFAULT_MAX_PIXELS:,}: 8192 x 8192)")
    add_model_arguments(
        parser,
        device_help="the encoder's, if this machine has it, else cpu",
        threads_help="the encoder's when both run on the CPU, else torch's",
        precision_help="the encoder's; another is refused",
    )
    return run_command(run, parser.parse_args(argv))
