"""`mambaic train TRAIN_DIR --val VAL_DIR --lambda L --out RUN_DIR`: train MambaIC as the official train.py does.

Random crops of the training images (--patch-size, default 256), batches of --batch-size; Adam at
1e-4, auxiliary Adam at 1e-3 for the entropy bottleneck's quantiles, gradients clipped to 1.0;
loss lambda * 255^2 * MSE + bpp (--metric ms-ssim: lambda * (1 - MS-SSIM) + bpp); the learning
rate divided by 10 at each --milestones epoch. After every epoch the whole validation images are
scored and RUN_DIR gets checkpoint_last.pth.tar, checkpoint_best.pth.tar (lowest validation loss;
the official format: state_dict, optimizer, aux_optimizer, lr_scheduler, epoch, loss) and a row of
log.csv. --resume RUN_DIR/checkpoint_last.pth.tar continues a run; --init CKPT starts from weights.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from pathlib import Path

from ._model import UserError, _depths, _positive, resolve_device, run_command, size_options

PRECISIONS = ("fp32", "tf32", "bf16")  # bf16: autocast over float32 master weights


def run(args: argparse.Namespace) -> None:
    import torch
    from tqdm import tqdm

    import mambaic
    from mambaic import training as T

    from mambaic.models import IMAGE_MULTIPLE

    if args.patch_size % IMAGE_MULTIPLE:
        raise UserError(f"--patch-size must be a multiple of {IMAGE_MULTIPLE} (the model's input side), got {args.patch_size}")
    device = resolve_device(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        train_set = T.RandomCrops(args.train_dir, args.patch_size, args.seed)
        val_set = T.WholeImages(args.val)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.init and args.resume:
        raise UserError("--init and --resume exclude each other (--resume restores the weights too)")
    torch.manual_seed(args.seed)
    if args.init:
        try:
            model = mambaic.load_checkpoint(args.init)
        except (ValueError, FileNotFoundError) as exc:
            raise UserError(str(exc)) from None
    else:
        model = mambaic.random_model(args.seed, **size_options(args))
    model = model.to(device).train()
    optimizer, aux_optimizer = T.optimizers(model, args.lr, args.aux_lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, args.milestones or [], gamma=0.1)
    start, best = 0, math.inf
    if args.resume:
        try:
            state = torch.load(args.resume, map_location=device, weights_only=False)
            model.load_state_dict(state["state_dict"])
            optimizer.load_state_dict(state["optimizer"])
            aux_optimizer.load_state_dict(state["aux_optimizer"])
            scheduler.load_state_dict(state["lr_scheduler"])
            start, best = state["epoch"] + 1, state.get("best_loss", state["loss"])
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            raise UserError(f"{args.resume}: cannot resume from it ({exc})") from None
    if start >= args.epochs:
        raise UserError(f"{args.resume} ends at epoch {start - 1}; ask for more --epochs than {args.epochs}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    criterion = T.RateDistortionLoss(args.lmbda, args.metric)
    autocast = T.autocast_for(args.precision, device)
    generator = torch.Generator().manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, generator=generator)  # fmt: skip
    if len(loader) == 0:
        raise UserError(f"{args.train_dir}: {len(train_set)} images, fewer than one batch of {args.batch_size}")
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=1)
    log_path = out / "log.csv"
    fields = ["epoch", "lr", "train_loss", "train_bpp", "train_psnr", "val_loss", "val_bpp", "val_psnr", "seconds"]
    new_log = not log_path.exists() or not args.resume
    with open(log_path, "w" if new_log else "a", newline="") as log:
        writer = csv.DictWriter(log, fieldnames=fields)
        if new_log:
            writer.writeheader()
        for epoch in range(start, args.epochs):
            t0 = time.perf_counter()
            train_set.set_epoch(epoch)
            # the epoch's order and training noise from the seed and the epoch: a resumed run
            # continues exactly as an uninterrupted one
            generator.manual_seed(args.seed + epoch)
            torch.manual_seed(args.seed + epoch)
            sums, steps = {"loss": 0.0, "bpp": 0.0, "mse": 0.0}, 0
            bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", file=sys.stderr, total=min(len(loader), args.max_steps or len(loader)))
            for batch in bar:
                if args.max_steps and steps >= args.max_steps:
                    break
                r = T.train_step(model, batch.to(device), criterion, optimizer, aux_optimizer, args.clip, autocast)
                if r is None:
                    bar.write(f"epoch {epoch}: a non-finite loss; step skipped", file=sys.stderr)
                    continue
                steps += 1
                sums["loss"], sums["bpp"], sums["mse"] = sums["loss"] + r.loss, sums["bpp"] + r.bpp, sums["mse"] + r.mse
                bar.set_postfix(loss=f"{r.loss:.3f}", bpp=f"{r.bpp:.3f}", psnr=f"{T.psnr_of(r.mse):.2f}")
            bar.close()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            val = T.validate(model, val_loader, criterion, autocast, device)
            n = max(steps, 1)
            row = {"epoch": epoch, "lr": lr, "train_loss": sums["loss"] / n, "train_bpp": sums["bpp"] / n,
                   "train_psnr": T.psnr_of(sums["mse"] / n), "val_loss": val["loss"], "val_bpp": val["bpp"],
                   "val_psnr": val["psnr"], "seconds": time.perf_counter() - t0}  # fmt: skip
            writer.writerow(row)
            log.flush()
            state = T.checkpoint(model, optimizer, aux_optimizer, scheduler, epoch, val["loss"])
            best = min(best, val["loss"])
            state["best_loss"] = best
            _save(state, out / "checkpoint_last.pth.tar")
            if val["loss"] <= best:
                _save(state, out / "checkpoint_best.pth.tar")
            print(f"epoch {epoch}: train loss {row['train_loss']:.4f}, val loss {val['loss']:.4f}, "
                  f"bpp {val['bpp']:.4f}, PSNR {val['psnr']:.2f} dB")


def _save(state: dict, path: Path) -> None:
    """torch.save to a temporary file, then rename: a run killed while saving leaves the last good file."""
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mambaic train", description=__doc__.split("\n\n")[0])
    parser.add_argument("train_dir", help="folder of training images (searched recursively; png, jpg, webp)")
    parser.add_argument("--val", required=True, metavar="DIR", help="folder of validation images, scored whole")
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="where checkpoints and log.csv go")
    parser.add_argument("--lambda", dest="lmbda", type=float, required=True,
                        help="rate-distortion trade-off (MambaIC's and CompressAI's: 0.0018 ... 0.0483 for MSE)")
    parser.add_argument("--metric", choices=("mse", "ms-ssim"), default="mse")
    parser.add_argument("--epochs", type=_positive, default=50)
    parser.add_argument("--batch-size", type=_positive, default=8)
    parser.add_argument("--patch-size", type=_positive, default=256)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--aux-lr", type=float, default=1e-3)
    parser.add_argument("--clip", type=float, default=1.0, help="gradient norm clip (0: none)")
    parser.add_argument("--milestones", type=int, nargs="*", help="epochs at which the learning rate is divided by 10")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32; tf32 (TF32 matmuls and convolutions); bf16 (autocast, float32 master weights)")
    parser.add_argument("--resume", metavar="CKPT", help="continue a run from its checkpoint")
    parser.add_argument("--init", metavar="CKPT", help="start from these weights (official or ours)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="data loader processes (default 0: in the main one)")
    parser.add_argument("--max-steps", type=_positive, help="at most this many steps per epoch (quick runs, tests)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=_positive, metavar="T", help="CPU threads")
    small = parser.add_argument_group("model size of a random initialisation (defaults: the official model)")
    small.add_argument("--N", type=int)
    small.add_argument("--M", type=int)
    small.add_argument("--depths", type=_depths)
    small.add_argument("--num-slices", type=int)
    small.add_argument("--z-channels", type=int)
    return run_command(run, parser.parse_args(argv))
