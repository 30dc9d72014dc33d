"""`mambaic compress IN.png OUT.mic --checkpoint CKPT`: encode an image into a .mic file.

Any size (the image is padded to a multiple of 128 and cropped back by the decoder); RGB,
grayscale (converted) and RGBA (alpha dropped with a warning); 16-bit images are refused.
Prints the size, bits per pixel over the original pixels, and the times.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

from mambaic.codec.image_codec import DEFAULT_MAX_PIXELS

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


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def run(args: argparse.Namespace) -> None:
    from mambaic.codec import encode_image, weights_fingerprint
    from mambaic.codec.platform import describe
    from mambaic.image import ImageError, read_image, write_atomic
    from mambaic_kernels import BackendUnavailableError

    check_output(args.output, args.force, [args.input])
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            x = read_image(args.input, args.max_pixels)
        for w in caught:
            print(f"Warning: {w.message}", file=sys.stderr)
    except (ImageError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None

    device = resolve_device(args)
    resolve_threads(args)
    t0 = time.perf_counter()
    model = build_model(args, device)
    model.update()
    fingerprint = weights_fingerprint(model)
    sync(device)
    t1 = time.perf_counter()
    try:
        encoded = encode_image(model, x, fingerprint)
    except BackendUnavailableError as exc:
        raise UserError(str(exc)) from None
    sync(device)
    t2 = time.perf_counter()
    try:
        write_atomic(args.output, encoded.data)
    except OSError as exc:
        raise UserError(f"{args.output}: cannot write ({exc.strerror or exc})") from None

    mic = encoded.mic
    padded = ""
    if mic.pad_bottom or mic.pad_right:
        padded = f" (coded as {mic.width + mic.pad_right}x{mic.height + mic.pad_bottom})"
    print(f"{args.input}: {mic.width}x{mic.height}{padded} -> {args.output}: {len(encoded.data)} bytes")
    print(f"bpp: {encoded.bits_per_pixel():.4f} (strings only: {encoded.bits_per_pixel(whole_file=False):.4f})")
    print(f"time: model {t1 - t0:.2f} s, encode {t2 - t1:.2f} s")
    print(f"encoded with {describe(mic.platform)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mambaic compress", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="image file (PNG, JPEG, ... read with PIL)")
    parser.add_argument("output", help="the .mic file to write (atomically)")
    parser.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    parser.add_argument("--max-pixels", type=_positive, default=DEFAULT_MAX_PIXELS, metavar="P",
                        help=f"refuse larger images (default {DEFAULT_MAX_PIXELS:,}: 8192 x 8192, what decompress accepts)")
    add_model_arguments(parser, device_help="cuda if there is a GPU, else cpu", threads_help="torch's", precision_help="fp32")
    return run_command(run, parser.parse_args(argv))
