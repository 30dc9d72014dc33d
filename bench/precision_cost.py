"""What a reduced precision costs against fp32, with the same weights, on real photographs.

    python bench/precision_cost.py                              # random weights, every precision
    python bench/precision_cost.py --checkpoint ckpt.pth.tar --json out.json

For crops of scikit-image's bundled photographs (astronaut, coffee, chelsea) at several sizes,
each precision mode (MambaIC.set_precision) encodes and decodes the crop through the .mic codec
(real strings) and runs the forward; against fp32 with the same weights we report:

- PSNR between the fp32 and the reduced-precision reconstructions (decoded images, [0, 1]);
- the estimated bpp (forward likelihoods) and the actual bpp (the entropy-coded strings; the
  header, whose platform record names the precision, is left out), their relative change;
- PSNR between fp32's and the reduced-precision synthesis of the same (fp32) latents: the
  transform's own error, without the latents that round the other way;
- the share of integer latents (round(y - means), the coded symbols) that differ from fp32's.

One latent that rounds the other way changes the means of every later slice, so the decoded
images of two precisions can differ much more than their transforms do.

With random weights (the default) the model is not a codec that reconstructs the image, so only
the differences between precisions mean something, not the PSNR against the photograph.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` importable from a checkout

from bench.latency import in_precision  # noqa: E402
from bench.models import CONFIG_HELP, random_model  # noqa: E402
from bench.timing import git_commit  # noqa: E402
from mambaic.cli.eval import psnr  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea")
SIZES = ((128, 128), (256, 256), (256, 384))  # (H, W): every photo holds them
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


def crop(name: str, height: int, width: int) -> torch.Tensor:
    """The centre crop of a scikit-image photograph, (1, 3, H, W) float in [0, 1]."""
    from skimage import data

    rgb = getattr(data, name)()
    top, left = (rgb.shape[0] - height) // 2, (rgb.shape[1] - width) // 2
    rgb = rgb[top : top + height, left : left + width]
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255


def measure(model, x: torch.Tensor, y_hat_ref: torch.Tensor | None = None) -> dict:
    """Forward (estimated bpp), a real encode / decode, the integer latents, and the synthesis of
    ``y_hat_ref`` (the fp32 latent: the transform's own error, without flipped latents)."""
    from mambaic.codec import decode_image, encode_image

    pixels = x.shape[-2] * x.shape[-1]
    symbols = []
    with torch.no_grad():
        out = model(x)
        model.compress(x, symbols_hook=lambda part, s: symbols.append(s.reshape(-1).cpu()))
    estimated = sum(float(-torch.log2(v).sum()) for v in out["likelihoods"].values()) / pixels
    encoded = encode_image(model, x)
    x_hat, y_hat = decode_image(model, encoded.data)  # checksummed: bit-exact or an error
    if y_hat_ref is None:
        y_hat_ref = y_hat
    with torch.no_grad():
        synthesis = model._synthesis(y_hat_ref.to(x.device)).clamp_(0, 1).float().cpu()
    return {"x_hat": x_hat.float().cpu(), "y_hat": y_hat.cpu(), "symbols": torch.cat(symbols), "synthesis": synthesis,
            "estimated_bpp": estimated, "actual_bpp": encoded.bits_per_pixel(whole_file=False)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="weights to use (default: random, seed 0)")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS[1:], default=list(PRECISIONS[1:]))
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", help=CONFIG_HELP)
    parser.add_argument("--sizes", nargs="+", default=[f"{h}x{w}" for h, w in SIZES], help="HxW crops")
    parser.add_argument("--json", metavar="OUT.json")
    args = parser.parse_args(argv)

    import mambaic
    from tqdm import tqdm

    if args.checkpoint:
        model = mambaic.load_checkpoint(args.checkpoint)
    else:
        model = random_model(args.config)
    model = model.to(args.device).eval()
    model.update()
    weights = {k: v.to("cpu", copy=True) for k, v in model.state_dict().items()}
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    crops = [(name, h, w) for name in PHOTOS for h, w in sizes]

    rows = []
    with tqdm(total=len(crops) * (1 + len(args.precision)), desc="precision cost", unit="coding", file=sys.stderr) as bar:
        for name, h, w in crops:
            x = crop(name, h, w).to(args.device)
            in_precision(model, "fp32", weights)
            ref = measure(model, x)
            bar.update()
            for precision in args.precision:
                in_precision(model, precision, weights)
                got = measure(model, x, ref["y_hat"])
                bar.update()
                rows.append({
                    "photo": name, "height": h, "width": w, "precision": precision,
                    "psnr_vs_fp32_db": psnr(got["x_hat"], ref["x_hat"]),
                    "synthesis_psnr_vs_fp32_db": psnr(got["synthesis"], ref["synthesis"]),
                    "estimated_bpp": got["estimated_bpp"], "estimated_bpp_fp32": ref["estimated_bpp"],
                    "actual_bpp": got["actual_bpp"], "actual_bpp_fp32": ref["actual_bpp"],
                    "flipped_latents_pct": 100 * float((got["symbols"] != ref["symbols"]).float().mean()),
                })  # fmt: skip

    lines = ["| precision | decoded image: PSNR vs fp32 (dB), min / median | g_s on fp32's latents: PSNR vs fp32 (dB), "
             "min / median | estimated bpp change, median / max | actual bpp change, median / max | integer latents "
             "that differ from fp32's, median / max |", "|---|---|---|---|---|---|"]
    for precision in args.precision:
        sel = [r for r in rows if r["precision"] == precision]
        p = [r["psnr_vs_fp32_db"] for r in sel]
        syn = [r["synthesis_psnr_vs_fp32_db"] for r in sel]
        est = [100 * abs(r["estimated_bpp"] / r["estimated_bpp_fp32"] - 1) for r in sel]
        act = [100 * abs(r["actual_bpp"] / r["actual_bpp_fp32"] - 1) for r in sel]
        flips = [r["flipped_latents_pct"] for r in sel]
        lines.append(f"| {precision} | {min(p):.1f} / {statistics.median(p):.1f} | {min(syn):.1f} / "
                     f"{statistics.median(syn):.1f} | {statistics.median(est):.2f}% / "
                     f"{max(est):.2f}% | {statistics.median(act):.2f}% / {max(act):.2f}% | "
                     f"{statistics.median(flips):.2f}% / {max(flips):.2f}% |")
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    header = (f"{device} | torch {torch.__version__} | commit {git_commit()} | "
              f"{'checkpoint ' + args.checkpoint if args.checkpoint else 'random weights (seed 0)'} | "
              f"{len(crops)} crops: {', '.join(PHOTOS)} at {', '.join(args.sizes)}")
    print(header + "\n\n" + "\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
