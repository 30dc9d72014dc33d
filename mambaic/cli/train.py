"""`mambaic train TRAIN_DIR --val VAL_DIR --lambda L --out RUN_DIR`: train MambaIC as the official train.py does.

Random crops of the training images (--patch-size, default 256), batches of --batch-size; Adam at
1e-4, auxiliary Adam at 1e-3 for the entropy bottleneck's quantiles, gradients clipped to 1.0;
loss lambda * 255^2 * MSE + bpp (--metric ms-ssim: lambda * (1 - MS-SSIM) + bpp); the learning
rate divided by 10 at each --milestones epoch. After every epoch the whole validation images are
scored and RUN_DIR gets checkpoint_last.pth.tar, checkpoint_best.pth.tar (lowest validation loss;
the official format: state_dict, optimizer, aux_optimizer, lr_scheduler, epoch, loss) and a row of
log.csv (steps.csv: a row per step). --resume RUN_DIR/checkpoint_last.pth.tar continues a run;
--init CKPT starts from weights.

Several GPUs (or CPU processes) through PyTorch's DistributedDataParallel:
    torchrun --nproc_per_node=G -m mambaic train TRAIN_DIR --val VAL_DIR --lambda L --out RUN_DIR
--batch-size is per process; each rank draws its own images (DistributedSampler) and rank 0
alone writes. After every epoch the ranks compare their weights' digests (an error if they
differ). A run resumes with any number of processes.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from pathlib import Path

from ._model import UserError, _depths, _positive, require_gpu, resolve_device, run_command, size_options

PRECISIONS = ("fp32", "tf32", "bf16")  # bf16: autocast over float32 master weights


def run(args: argparse.Namespace) -> None:
    from mambaic.distributed import Ranks
    from mambaic.models import IMAGE_MULTIPLE

    if args.patch_size % IMAGE_MULTIPLE:
        raise UserError(f"--patch-size must be a multiple of {IMAGE_MULTIPLE} (the model's input side), got {args.patch_size}")
    if args.init and args.resume:
        raise UserError("--init and --resume exclude each other (--resume restores the weights too)")
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise UserError(f"--max-minutes must be positive, got {args.max_minutes}")
    device_type = resolve_device(args)
    ranks = Ranks.from_environment(device_type)
    try:
        _train(args, ranks, ranks.device(device_type))
    finally:
        ranks.close()


def _train(args: argparse.Namespace, ranks, device) -> None:
    import torch
    from tqdm import tqdm

    from mambaic import training as T

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        train_set = T.RandomCrops(args.train_dir, args.patch_size, args.seed)
        val_set = T.WholeImages(args.val)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    model, optimizer, aux_optimizer, scheduler, state = _model_and_optimizers(args, device)
    start, best, step = state.get("epoch", -1) + 1, state.get("best_loss", state.get("loss", math.inf)), state.get("step", 0)
    if start >= args.epochs:
        raise UserError(f"{args.resume} ends at epoch {start - 1}; ask for more --epochs than {args.epochs}")
    module, model = model, ranks.wrap(model, device)

    out = Path(args.out)
    if ranks.main:
        out.mkdir(parents=True, exist_ok=True)
    criterion = T.RateDistortionLoss(args.lmbda, args.metric)
    autocast = T.autocast_for(args.precision, device.type)
    graphed = None
    if args.cuda_graphs:
        require_gpu("--cuda-graphs", device.type)
        if ranks.distributed:
            raise UserError("--cuda-graphs runs in one process only (DistributedDataParallel's gradient all-reduce "
                            "is not captured); under torchrun, train without it")
        graphed = T.GraphedForwardBackward(model, criterion, T.autocast_for(args.precision, "cuda", cuda_graphs=True))
    loader, sampler, generator = _train_loader(args, train_set, ranks)
    if len(loader) == 0:
        raise UserError(f"{args.train_dir}: {len(train_set)} images, fewer than one batch of {args.batch_size}"
                        + (f" on each of {ranks.world} processes" if ranks.distributed else ""))  # fmt: skip
    # each rank scores its share of the validation images; the sums are added up
    val_share = torch.utils.data.Subset(val_set, range(ranks.rank, len(val_set), ranks.world))
    val_loader = torch.utils.data.DataLoader(val_share, batch_size=1)
    deadline = time.perf_counter() + 60 * args.max_minutes if args.max_minutes else math.inf
    logs = _Logs(out, resume=bool(args.resume)) if ranks.main else None
    try:
        for epoch in range(start, args.epochs):
            t0 = time.perf_counter()
            train_set.set_epoch(epoch)
            # the epoch's order and training noise from the seed, the epoch and the rank: a resumed
            # run continues exactly as an uninterrupted one
            if sampler is not None:
                sampler.set_epoch(epoch)
            else:
                generator.manual_seed(args.seed + epoch)
            torch.manual_seed(args.seed + epoch + 1_000_003 * ranks.rank)
            sums, steps, stopped = [0.0, 0.0, 0.0], 0, False
            total = min(len(loader), args.max_steps or len(loader))
            bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", file=sys.stderr, total=total, disable=not ranks.main)
            for batch in bar:
                if steps >= total:
                    break
                if args.max_minutes and ranks.any(time.perf_counter() > deadline, device):  # no collective without it
                    stopped = True
                    break
                r = T.train_step(model, batch.to(device), criterion, optimizer, aux_optimizer, args.clip, autocast,
                                 skip_together=lambda bad: ranks.any(bad, device), graphed=graphed)  # fmt: skip
                if r is None:
                    bar.write(f"epoch {epoch}: a non-finite loss; step skipped", file=sys.stderr)
                    continue
                steps, step = steps + 1, step + 1
                sums = [sums[0] + r.loss, sums[1] + r.bpp, sums[2] + r.mse]
                bar.set_postfix(loss=f"{r.loss:.3f}", bpp=f"{r.bpp:.3f}", psnr=f"{T.psnr_of(r.mse):.2f}")
                if logs:
                    logs.step(step, epoch, r, optimizer.param_groups[0]["lr"])
            bar.close()
            if stopped and not ranks.sum([steps], device)[0]:
                if ranks.main:  # the time ran out between epochs: nothing new to score or save
                    print(f"stopped after {args.max_minutes} minutes (--max-minutes), before epoch {epoch}, step {step}")
                break
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            loss_sum, bpp_sum, mse_sum, n = ranks.sum([*sums, steps], device)
            val = T.validate(model, val_loader, criterion, autocast, device)
            v_loss, v_bpp, v_psnr, v_n = ranks.sum([val["loss"], val["bpp"], val["psnr"], val["images"]], device)
            v_loss, v_bpp, v_psnr = (v / max(v_n, 1) for v in (v_loss, v_bpp, v_psnr))
            digest = ranks.check_identical_weights(module, device)
            n = max(n, 1)
            row = {"epoch": epoch, "steps": step, "lr": lr, "train_loss": loss_sum / n, "train_bpp": bpp_sum / n,
                   "train_psnr": T.psnr_of(mse_sum / n), "val_loss": v_loss, "val_bpp": v_bpp, "val_psnr": v_psnr,
                   "seconds": time.perf_counter() - t0,
                   "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else ""}  # fmt: skip
            best = min(best, v_loss)
            if ranks.main:
                logs.epoch(row)
                state = T.checkpoint(module, optimizer, aux_optimizer, scheduler, epoch, v_loss)
                state["best_loss"], state["step"] = best, step
                _save(state, out / "checkpoint_last.pth.tar")
                if v_loss <= best:
                    _save(state, out / "checkpoint_best.pth.tar")
                agree = f"; the {ranks.world} ranks hold identical weights (sha256 {digest[:12]})" if ranks.distributed else ""
                print(f"epoch {epoch}: train loss {row['train_loss']:.4f}, val loss {v_loss:.4f}, "
                      f"bpp {v_bpp:.4f}, PSNR {v_psnr:.2f} dB{agree}", flush=True)
            if stopped:
                if ranks.main:
                    print(f"stopped after {args.max_minutes} minutes (--max-minutes), at epoch {epoch}, step {step}")
                break
    finally:
        if logs:
            logs.close()


def _model_and_optimizers(args, device):
    """The model (random, --init or --resume), its two optimizers and the schedule, on ``device``;
    and the resumed checkpoint's dict (empty when not resuming)."""
    import torch

    import mambaic
    from mambaic import training as T

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
    state = {}
    if args.resume:
        try:
            state = torch.load(args.resume, map_location=device, weights_only=False)
            model.load_state_dict(state["state_dict"])
            optimizer.load_state_dict(state["optimizer"])
            aux_optimizer.load_state_dict(state["aux_optimizer"])
            scheduler.load_state_dict(state["lr_scheduler"])
            missing = [k for k in ("epoch", "loss") if k not in state]
            if missing:
                raise KeyError(", ".join(missing))
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            raise UserError(f"{args.resume}: cannot resume from it ({exc})") from None
    return model, optimizer, aux_optimizer, scheduler, state


def _train_loader(args, train_set, ranks):
    """The training batches: shuffled by a seeded generator in one process; with several, a
    DistributedSampler hands each rank its own --batch-size images per step."""
    import torch

    if ranks.distributed:
        sampler = torch.utils.data.DistributedSampler(train_set, ranks.world, ranks.rank, shuffle=True, seed=args.seed,
                                                      drop_last=True)  # fmt: skip
        loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, drop_last=True,
                                             num_workers=args.workers)  # fmt: skip
        return loader, sampler, None
    generator = torch.Generator().manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, generator=generator)  # fmt: skip
    return loader, None, generator


class _Logs:
    """RUN_DIR/log.csv (a row per epoch, validation included) and RUN_DIR/steps.csv (a row per
    step: rank 0's batch), appended to when resuming."""

    EPOCH = ["epoch", "steps", "lr", "train_loss", "train_bpp", "train_psnr", "val_loss", "val_bpp", "val_psnr", "seconds",
             "peak_mib"]  # peak_mib: rank 0's GPU memory peak so far (torch.cuda.max_memory_allocated)
    STEP = ["step", "epoch", "lr", "loss", "bpp", "psnr", "aux", "seconds"]

    def __init__(self, out: Path, resume: bool):
        self.t0 = time.perf_counter()
        self.files, self.writers = [], []
        for name, fields in (("log.csv", self.EPOCH), ("steps.csv", self.STEP)):
            path = out / name
            new = not (resume and path.exists())
            f = open(path, "w" if new else "a", newline="")
            writer = csv.DictWriter(f, fieldnames=fields)
            if new:
                writer.writeheader()
            self.files.append(f)
            self.writers.append(writer)

    def epoch(self, row: dict) -> None:
        self.writers[0].writerow(row)
        self.files[0].flush()

    def step(self, step: int, epoch: int, r, lr: float) -> None:
        from mambaic.training import psnr_of

        self.writers[1].writerow({"step": step, "epoch": epoch, "lr": lr, "loss": r.loss, "bpp": r.bpp,
                                  "psnr": psnr_of(r.mse), "aux": r.aux, "seconds": time.perf_counter() - self.t0})  # fmt: skip

    def close(self) -> None:
        for f in self.files:
            f.close()


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
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay each step's forward and backward from a CUDA graph (one GPU, one process): "
                             "the step's thousands of small launches become one")
    parser.add_argument("--resume", metavar="CKPT", help="continue a run from its checkpoint")
    parser.add_argument("--init", metavar="CKPT", help="start from these weights (official or ours)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="data loader processes (default 0: in the main one)")
    parser.add_argument("--max-steps", type=_positive, help="at most this many steps per epoch (quick runs, tests)")
    parser.add_argument("--max-minutes", type=float, metavar="MIN",
                        help="stop after this much training time: the epoch under way is validated and saved")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=_positive, metavar="T", help="CPU threads")
    small = parser.add_argument_group("model size of a random initialisation (defaults: the official model)")
    small.add_argument("--N", type=int)
    small.add_argument("--M", type=int)
    small.add_argument("--depths", type=_depths)
    small.add_argument("--num-slices", type=int)
    small.add_argument("--z-channels", type=int)
    return run_command(run, parser.parse_args(argv))
