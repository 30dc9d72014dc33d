"""One official training step of MambaIC, timed per backend side by side, with its peak memory.

    python bench/train_step.py                       # every available backend, the official step
    python bench/train_step.py --backend vmamba auto --json out.json

The step is the official train.py's (mambaic.training.train_step): a batch of --batch random
--patch crops of scikit-image's photographs, forward, lambda * 255^2 * MSE + bpp, backward,
gradient clipping at 1.0, Adam, then the auxiliary loss and its Adam. `vmamba` runs the scans
with VMamba's CUDA kernels, as the official code does. Each backend gets a fresh model with the
same random weights; --warmup steps first (compilation, autotuning), then the median of --iters
steps (CUDA events on a GPU, wall clock on CPU) and the peak memory of those steps
(torch.cuda.max_memory_allocated, or the process's peak RSS on CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` importable from a checkout

from bench.latency import Clock, machine  # noqa: E402
from bench.models import CONFIG_HELP, random_model  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photo_batch(batch: int, patch: int, seed: int = 0) -> torch.Tensor:
    """``batch`` random patch x patch crops of scikit-image's photographs, (batch, 3, patch, patch)."""
    from skimage import data

    g = torch.Generator().manual_seed(seed)
    crops = []
    for i in range(batch):
        rgb = getattr(data, PHOTOS[i % len(PHOTOS)])()
        top = int(torch.randint(0, rgb.shape[0] - patch + 1, (1,), generator=g))
        left = int(torch.randint(0, rgb.shape[1] - patch + 1, (1,), generator=g))
        crops.append(torch.from_numpy(rgb[top : top + patch, left : left + patch].copy()).permute(2, 0, 1))
    return torch.stack(crops).float() / 255


def time_backend(backend: str, args, x: torch.Tensor, graphs: bool = False) -> dict:
    import mambaic_kernels as mk
    from mambaic import training as T

    clock = Clock(args.device)
    clock.reset_peak()
    torch.manual_seed(args.seed)
    model = random_model(args.config, args.seed).to(args.device).train()
    optimizer, aux_optimizer = T.optimizers(model)
    criterion = T.RateDistortionLoss(args.lmbda)
    autocast = T.autocast_for(args.precision, args.device)
    record = {"backend": backend + ("+graph" if graphs else ""), "precision": args.precision}
    graphed = None
    try:
        with mk.use_backend(backend):
            if graphs:
                graphed = T.GraphedForwardBackward(model, criterion, T.autocast_for(args.precision, args.device, True))

            def step():
                T.train_step(model, x, criterion, optimizer, aux_optimizer, 1.0, autocast, graphed=graphed)

            for _ in range(args.warmup):
                step()
            clock.sync()
            if not graphs:  # a graph's memory is taken at capture (the first step), held in its pool after
                clock.reset_peak()
            times = [clock.time_ms(step) for _ in range(args.iters)]
            record.update(median_ms=statistics.median(times), min_ms=min(times), peak_mib=clock.peak_mib(), steps=len(times))
    except torch.cuda.OutOfMemoryError:
        record["error"] = "OOM"
    del model, optimizer, aux_optimizer, graphed
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", nargs="+", help="backends to compare (default: every available one, vmamba included)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--lambda", dest="lmbda", type=float, default=0.0130)
    parser.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="also time each backend's step with its forward and backward replayed from a CUDA graph")
    parser.add_argument("--config", help=CONFIG_HELP)
    parser.add_argument("--json", metavar="OUT.json")
    args = parser.parse_args(argv)
    if args.patch % 128 or args.batch < 1 or args.iters < 1:
        parser.error("--patch must be a multiple of 128, --batch and --iters at least 1")

    from mambaic_kernels import _backend

    meta = dict(device=args.device, dtype=torch.float32, d_state=16, window=8, head_dim=16)
    available = [b for b in _backend.BACKENDS if all(_backend.why_unavailable(op, b, **meta) is None for op in _backend.OPS)]
    backends = args.backend or available
    x = photo_batch(args.batch, args.patch, args.seed).to(args.device)
    records = [time_backend(b, args, x) for b in backends]
    if args.cuda_graphs:
        records += [time_backend(b, args, x, graphs=True) for b in backends if b != "vmamba"]
    header = {**machine(args.device), "batch": args.batch, "patch": args.patch, "precision": args.precision,
              "command": " ".join(["python bench/train_step.py"] + (argv if argv is not None else sys.argv[1:]))}
    print(f"device {header['device']} | torch {header['torch']} | commit {header['commit']} | batch {args.batch} of "
          f"{args.patch}x{args.patch} | {args.precision}\n")
    print("| backend | step ms (median) | min ms | peak MiB |\n|---|---|---|---|")
    for r in records:
        if "error" in r:
            print(f"| {r['backend']} | {r['error']} | - | - |")
        else:
            print(f"| {r['backend']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['peak_mib']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": header, "results": records}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
