"""`mambaic eval DIR --checkpoint CKPT`: compress and decompress every image of a folder; rate and quality.

Every image (recursively: .png, .jpg, .jpeg, .webp, .bmp, .tif, .tiff) is really coded: encoded
to .mic bytes, decoded from them (checksums verified), and measured against the original:
bits per pixel from the file's size, PSNR and MS-SSIM of the 8-bit-range reconstruction in
[0, 1], encode and decode times. `--estimate` instead takes the bpp from the forward's
likelihoods without coding, as CompressAI's eval_model does. A file that cannot be read or
coded is reported and skipped; the run goes on. Results per image and their average go to the
terminal, and to --csv / --json.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

from ._model import (UserError, add_model_arguments, build_model, require_gpu, resolve_device, resolve_threads,
                     run_command)
from .compress import sync

METRICS = ("bpp", "psnr", "ms_ssim", "encode_s", "decode_s")
# pytorch_msssim's 5 scales with an 11-pixel window need a smaller side above (11 - 1) * 2^4
MS_SSIM_MIN_SIDE = 161


def find_images(folder: str) -> list[Path]:
    from mambaic.image import image_files

    try:
        return image_files(folder)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def psnr(x, x_hat) -> float:
    mse = float((x.double() - x_hat.double()).square().mean())
    return math.inf if mse == 0 else -10 * math.log10(mse)


def ms_ssim(x, x_hat) -> float | None:
    """MS-SSIM (pytorch_msssim, data range 1), or None for images too small for its 5 scales."""
    if min(x.shape[-2:]) < MS_SSIM_MIN_SIDE:
        return None
    from pytorch_msssim import ms_ssim as _ms_ssim

    return float(_ms_ssim(x.float(), x_hat.float(), data_range=1.0))


def evaluate(model, x, device: str, estimate: bool, fingerprint: bytes | None = None, forward=None) -> dict:
    """bpp, quality and times of one image (1, 3, H, W) in [0, 1]. ``fingerprint``: the model's
    weights_fingerprint, computed once for a whole run (hashing the weights costs more than coding
    a small image). ``forward``: what runs the model for --estimate (default the model itself)."""
    import torch

    from mambaic.codec import decode_image, encode_image
    from mambaic.image import crop, pad_to_multiple

    forward = forward or model
    pixels = x.shape[-2] * x.shape[-1]
    x = x.to(device)
    sync(device)
    t0 = time.perf_counter()
    if estimate:
        padded, _ = pad_to_multiple(x)
        with torch.no_grad():
            out = forward(padded)
        sync(device)
        t1 = t2 = time.perf_counter()
        bpp = sum(float(-torch.log2(v).sum()) for v in out["likelihoods"].values()) / pixels
        x_hat = crop(out["x_hat"], *x.shape[-2:]).clamp(0, 1)
    else:
        encoded = encode_image(model, x, fingerprint)
        sync(device)
        t1 = time.perf_counter()
        x_hat, _ = decode_image(model, encoded.data, fingerprint=fingerprint)
        sync(device)
        t2 = time.perf_counter()
        bpp = 8.0 * len(encoded.data) / pixels
    x_hat = torch.round(x_hat * 255) / 255  # what a decoded 8-bit image holds
    return {"bpp": bpp, "psnr": psnr(x, x_hat), "ms_ssim": ms_ssim(x, x_hat),
            "encode_s": t1 - t0, "decode_s": None if estimate else t2 - t1}  # fmt: skip


def average(rows: list[dict]) -> dict:
    out = {}
    for key in METRICS:
        values = [r[key] for r in rows if r.get(key) is not None and math.isfinite(r[key])]
        out[key] = statistics.fmean(values) if values else None
    return out


def _fmt(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def run(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from mambaic.codec import LatentMismatchError, ModelMismatchError, weights_fingerprint
    from mambaic.graphs import CUDAGraphForward
    from mambaic.image import ImageError, read_image
    from mambaic_kernels import BackendUnavailableError

    images = find_images(args.folder)
    device = resolve_device(args)
    resolve_threads(args)
    model = build_model(args, device)
    model.update()
    if args.cuda_graphs:
        require_gpu("--cuda-graphs", device)
        model.use_cuda_graphs()
    fingerprint = None if args.estimate else weights_fingerprint(model)
    forward = CUDAGraphForward(model.eval()) if args.cuda_graphs and args.estimate else model

    rows, skipped = [], []
    for path in tqdm(images, desc="eval", unit="image", file=sys.stderr):
        name = os.path.relpath(path, args.folder)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # an alpha channel dropped: the image is still evaluated
                x = read_image(path)
            result = evaluate(model, x, device, args.estimate, fingerprint, forward)
        except (ImageError, OSError, ModelMismatchError, LatentMismatchError, BackendUnavailableError) as exc:
            skipped.append({"image": name, "error": str(exc)})
            tqdm.write(f"Warning: {name}: skipped ({exc})", file=sys.stderr)
            continue
        rows.append({"image": name, "width": x.shape[-1], "height": x.shape[-2], **result})
    if not rows:
        raise UserError(f"{args.folder}: none of the {len(images)} images could be evaluated")

    mean = average(rows)
    mode = "estimated from the likelihoods" if args.estimate else "real .mic files"
    print(f"{len(rows)} images ({mode}; {len(skipped)} skipped), precision {model.precision}, device {device}")
    print(f"{'image':<40} {'size':>11} {'bpp':>8} {'PSNR dB':>8} {'MS-SSIM':>8} {'enc s':>7} {'dec s':>7}")
    for r in rows:
        size = f"{r['width']}x{r['height']}"
        print(f"{r['image'][:40]:<40} {size:>11} {r['bpp']:8.4f} {_fmt(r['psnr'], 2):>8} {_fmt(r['ms_ssim'], 4):>8} "
              f"{r['encode_s']:7.2f} {_fmt(r['decode_s'], 2):>7}")
    print(f"{'average':<40} {'':>11} {_fmt(mean['bpp'], 4):>8} {_fmt(mean['psnr'], 2):>8} {_fmt(mean['ms_ssim'], 4):>8} "
          f"{_fmt(mean['encode_s'], 2):>7} {_fmt(mean['decode_s'], 2):>7}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["image", "width", "height", *METRICS])
            writer.writeheader()
            writer.writerows(rows)
    if args.json:
        source = args.checkpoint or f"random-init seed {args.seed}"
        # "name" and "results": CompressAI's layout of a rate-distortion point (mambaic plot, bdrate)
        results = {"bpp": [mean["bpp"]], "psnr-rgb": [mean["psnr"]], "ms-ssim-rgb": [mean["ms_ssim"]]}
        record = {"name": args.name, "results": results, "source": source, "estimate": args.estimate,
                  "precision": model.precision, "device": device, "average": mean, "images": rows, "skipped": skipped}
        Path(args.json).write_text(json.dumps(record, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mambaic eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="folder of images (searched recursively)")
    parser.add_argument("--estimate", action="store_true",
                        help="bpp from the forward's likelihoods, without entropy coding (faster)")
    parser.add_argument("--csv", metavar="OUT.csv", help="per-image results as CSV")
    parser.add_argument("--json", metavar="OUT.json", help="per-image results and their average as JSON")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay the network from CUDA graphs (GPU): each image size is captured once, "
                             "then replayed; faster for many images of one size, slower for all-different sizes")
    parser.add_argument("--name", default="mambaic",
                        help="the curve this run is a point of, in the JSON (mambaic plot / bdrate join same-named files)")
    add_model_arguments(parser, device_help="cuda if there is a GPU, else cpu", threads_help="torch's",
                        precision_help="fp32")  # fmt: skip
    return run_command(run, parser.parse_args(argv))
