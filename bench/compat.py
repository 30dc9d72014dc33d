"""Which encoder / decoder platforms can decode each other's .mic files: the compatibility table.

    python bench/compat.py --encoders cpu:cpu:1 cpu:cpu:2 cpu:torch:2 --crops 20
    python bench/compat.py --encoders cuda:triton cuda:torch --decoders cuda:triton cuda:torch cpu:cpu cpu:torch

A platform is DEVICE:BACKEND[:THREADS] (threads: torch.set_num_threads, default: torch's). The
model is the official configuration with random weights (``--seed``); the images are crops of
scikit-image's photographs at random positions and sizes (``--min-side`` .. ``--max-side``, odd
sizes included, so the codec pads them). For each crop, each encoder writes a .mic file; each
decoder decodes it with its backend chosen explicitly (the decoder does not follow the file), and
the outcome is one of:

- exact: decoded, every latent checksum matched, and the decoded y_hat is the encoder's up to
  float noise (max |diff| < 0.01: the same integer symbols); the table also gives the largest
  8-bit pixel difference from the encoder platform's own decode;
- refused: the decoder stopped with LatentMismatchError at the first part whose checksum differs;
- WRONG: decoded without an error to other symbols than the encoder's (must never happen);
- ERROR: any other exception (a bug).

It also checks that the entropy coder's tables are the same when ``update()`` runs on each
device of the run (and how CompressAI's own update differs there). Results go to ``--json`` (per
crop, rewritten after each crop) and ``--markdown`` (the table).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` importable from a checkout

from bench.timing import git_commit  # noqa: E402

# The colour photographs scikit-image ships (others need a download).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")


def parse_platform(text: str) -> tuple[str, str, int | None]:
    parts = text.split(":")
    if len(parts) not in (2, 3) or parts[0] not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r}: a platform is DEVICE:BACKEND[:THREADS], e.g. cuda:triton or cpu:cpu:2")
    threads = int(parts[2]) if len(parts) == 3 else None
    return parts[0], parts[1], threads


def label(p: tuple) -> str:
    device, backend, threads = p
    return f"{backend} on {device}" + (f", {threads} thr" if threads else "")


@contextlib.contextmanager
def on(p: tuple):
    """Run the block as platform p: its backend for every op and its CPU thread count."""
    from mambaic_kernels import use_backend

    _, backend, threads = p
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with use_backend(backend):
            yield
    finally:
        torch.set_num_threads(before)


def crops(n: int, min_side: int, max_side: int, seed: int) -> list[tuple[str, torch.Tensor]]:
    """n crops of the photographs, round-robin over PHOTOS, random size and position."""
    from skimage import data

    rng = random.Random(seed)
    out = []
    for i in range(n):
        name = PHOTOS[i % len(PHOTOS)]
        rgb = getattr(data, name)()
        h, w = rng.randint(min_side, max_side), rng.randint(min_side, max_side)
        h, w = min(h, rgb.shape[0]), min(w, rgb.shape[1])
        top, left = rng.randint(0, rgb.shape[0] - h), rng.randint(0, rgb.shape[1] - w)
        crop = rgb[top : top + h, left : left + w, :3]
        x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float() / 255
        out.append((f"{name}[{top}:{top + h},{left}:{left + w}]", x))
    return out


def check_tables(models: dict) -> dict:
    """Tables from MambaIC.update and from CompressAI's own update, on each device of the run."""
    from compressai.models import CompressionModel

    from mambaic.codec import tables_fingerprint

    ours, theirs = {}, {}
    for device, model in models.items():
        model.update(force=True)
        ours[device] = tables_fingerprint(model).hex()
        CompressionModel.update(model, force=True)
        theirs[device] = tables_fingerprint(model).hex()
        model.update(force=True)  # back to ours for the run
    return {
        "mambaic update (CPU float64), tables fingerprint per device": ours,
        "compressai update (float32 on the device), tables fingerprint per device": theirs,
        "mambaic tables identical on every device": len(set(ours.values())) == 1,
        "compressai tables identical on every device": len(set(theirs.values())) == 1,
    }


def decode_outcome(model, data: bytes, y_hat_enc: torch.Tensor, p: tuple) -> dict:
    from mambaic.codec import LatentMismatchError, decode_image

    t0 = time.perf_counter()
    try:
        with on(p):
            x_hat, y_hat = decode_image(model, data, "crop.mic", follow_encoder=False)
    except LatentMismatchError as exc:
        return {"outcome": "refused", "part": exc.part, "seconds": time.perf_counter() - t0}
    except Exception as exc:  # noqa: BLE001 - every other failure is a finding of this table
        return {"outcome": "ERROR", "error": f"{type(exc).__name__}: {exc}"}
    diff = (y_hat.cpu() - y_hat_enc.cpu()).abs().max().item()
    outcome = "exact" if diff < 0.01 else "WRONG"
    return {"outcome": outcome, "y_hat_max_diff": diff, "x_hat": x_hat.cpu(), "seconds": time.perf_counter() - t0}


def summarise(cells: list[dict]) -> str:
    counts = {}
    for c in cells:
        counts[c["outcome"]] = counts.get(c["outcome"], 0) + 1
    text = ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    pix = [c["pixel_max_diff"] for c in cells if c.get("pixel_max_diff") is not None]
    if pix:
        text += f" (pixels within {max(pix)})"
    return text


def markdown(result: dict) -> str:
    encoders, decoders = result["encoders"], result["decoders"]
    lines = [
        f"Compatibility on {result['machine']} ({result['date']}, commit {result['commit']}): "
        f"{result['crops']} crops, {result['model']}.",
        "",
        "| encoder \\ decoder | " + " | ".join(decoders) + " |",
        "|---" * (len(decoders) + 1) + "|",
    ]
    for e in encoders:
        row = [summarise([c[e][d] for c in result["per_crop"] if e in c and d in c[e]]) for d in decoders]
        lines.append(f"| {e} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoders", type=parse_platform, nargs="+", required=True)
    parser.add_argument("--decoders", type=parse_platform, nargs="+", help="default: the encoders")
    parser.add_argument("--crops", type=int, default=20)
    parser.add_argument("--skip", type=int, default=0, help="start at this crop (to continue a run)")
    parser.add_argument("--min-side", type=int, default=48)
    parser.add_argument("--max-side", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0, help="model weights and crop positions")
    parser.add_argument("--tiny", action="store_true", help="a tiny model (N=8, M=20) instead of the official size")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    decoders = args.decoders or args.encoders

    import mambaic
    from mambaic.codec import encode_image
    from mambaic.image import to_uint8

    size = dict(N=8, M=20, depths=(1, 1, 1, 1), z_channels=8) if args.tiny else {}
    devices = sorted({p[0] for p in list(args.encoders) + list(decoders)})
    models = {d: mambaic.random_model(args.seed, **size).to(d).eval() for d in devices}
    machine = torch.cuda.get_device_name(0) if "cuda" in devices else "CPU"
    result = {
        "machine": machine,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "commit": git_commit(),
        "torch": torch.__version__,
        "model": "tiny model (N=8, M=20)" if args.tiny else f"official-size model, random weights (seed {args.seed})",
        "crops": args.crops - args.skip,
        "encoders": [label(p) for p in args.encoders],
        "decoders": [label(p) for p in decoders],
        "tables": check_tables(models),
        "per_crop": [],
    }
    print(json.dumps(result["tables"], indent=1), flush=True)
    for i, (name, x) in enumerate(crops(args.crops, args.min_side, args.max_side, args.seed)):
        if i < args.skip:
            continue
        row = {"crop": name}
        for e in args.encoders:
            t0 = time.perf_counter()
            with on(e):
                encoded = encode_image(models[e[0]], x)
            own = decode_outcome(models[e[0]], encoded.data, encoded.y_hat, e)
            cells = {}
            for d in decoders:
                cell = own if d == e else decode_outcome(models[d[0]], encoded.data, encoded.y_hat, d)
                cell = dict(cell)
                if cell["outcome"] == "exact" and own["outcome"] == "exact":
                    cell["pixel_max_diff"] = int(np.abs(to_uint8(cell["x_hat"]).astype(int) - to_uint8(own["x_hat"])).max())
                cell.pop("x_hat", None)
                cells[label(d)] = cell
            row[label(e)] = cells
            row.setdefault("bytes", {})[label(e)] = len(encoded.data)
            outcomes = " ".join(f"{d}={c['outcome']}" for d, c in cells.items())
            print(f"[{i + 1}/{args.crops}] {name} {label(e)} ({time.perf_counter() - t0:.1f} s): {outcomes}", flush=True)
        result["per_crop"].append(row)
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        if args.markdown:
            args.markdown.write_text(markdown(result))
    print(markdown(result))
    bad = [c for row in result["per_crop"] for e in result["encoders"] for c in row[e].values()
           if c["outcome"] in ("WRONG", "ERROR")]  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
