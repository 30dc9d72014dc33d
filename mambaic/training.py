"""Training MambaIC as the official train.py does, on our kernels: data, loss, optimisers, one epoch.

The official defaults: Adam at 1e-4 for the network and Adam at 1e-3 for the entropy bottleneck's
quantiles (the auxiliary loss), gradients clipped to norm 1.0, the loss lambda * 255^2 * MSE + bpp
(or lambda * (1 - MS-SSIM) + bpp), a MultiStepLR schedule (gamma 0.1 at the milestone epochs).
Checkpoints hold what the official script saves: state_dict, optimizer, aux_optimizer,
lr_scheduler, epoch and loss, so that either side loads the other's.
"""

from __future__ import annotations

import gc

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mambaic.graphs import capture
from mambaic.image import image_files as _image_files
from mambaic.image import pad_to_multiple

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")  # what the official training reads


def image_files(folder: str | Path) -> list[Path]:
    """The training or validation images below ``folder`` (recursive), sorted."""
    return _image_files(folder, EXTENSIONS)


def _load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


class RandomCrops(torch.utils.data.Dataset):
    """Random ``size`` x ``size`` crops of the images of a folder, (3, size, size) in [0, 1]; an
    image smaller than the crop is padded by reflection first. The crop position comes from the
    sample index and ``epoch`` (set_epoch), so runs are reproducible, worker processes included."""

    def __init__(self, folder: str | Path, size: int = 256, seed: int = 0):
        self.files, self.size, self.seed, self.epoch = image_files(folder), size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        rgb = _load_rgb(self.files[i])
        s = self.size
        pad_h, pad_w = max(0, s - rgb.shape[0]), max(0, s - rgb.shape[1])
        if pad_h or pad_w:
            rgb = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect" if min(rgb.shape[:2]) > 1 else "edge")
        rng = random.Random(hash((self.seed, self.epoch, i)))
        top, left = rng.randint(0, rgb.shape[0] - s), rng.randint(0, rgb.shape[1] - s)
        crop = rgb[top : top + s, left : left + s]
        return torch.from_numpy(crop.copy()).permute(2, 0, 1).float() / 255


class WholeImages(torch.utils.data.Dataset):
    """The images of a folder, whole, (3, H, W) in [0, 1] (validation, batch size 1)."""

    def __init__(self, folder: str | Path):
        self.files = image_files(folder)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(_load_rgb(self.files[i]).copy()).permute(2, 0, 1).float() / 255


class RateDistortionLoss(torch.nn.Module):
    """lambda * 255^2 * MSE + bpp ("mse"), or lambda * (1 - MS-SSIM) + bpp ("ms-ssim"), with bpp
    over the target's pixels."""

    def __init__(self, lmbda: float, metric: str = "mse"):
        super().__init__()
        if metric not in ("mse", "ms-ssim"):
            raise ValueError(f"RateDistortionLoss: metric must be mse or ms-ssim, got {metric!r}")
        self.lmbda, self.metric = lmbda, metric

    def forward(self, out: dict, target: torch.Tensor) -> dict:
        batch, _, H, W = target.shape
        bpp = sum(torch.log(v.float()).sum() for v in out["likelihoods"].values()) / (-math.log(2) * batch * H * W)
        x_hat = out["x_hat"].float()
        mse = torch.mean((x_hat - target) ** 2)
        if self.metric == "mse":
            loss = self.lmbda * 255**2 * mse + bpp
        else:
            from pytorch_msssim import ms_ssim

            loss = self.lmbda * (1 - ms_ssim(x_hat, target, data_range=1.0)) + bpp
        return {"loss": loss, "bpp": bpp, "mse": mse}


def optimizers(model: torch.nn.Module, lr: float = 1e-4, aux_lr: float = 1e-3):
    """Adam for the network, Adam for the entropy bottleneck's quantiles (the official split)."""
    named = dict(model.named_parameters())
    aux = sorted(n for n, p in named.items() if n.endswith(".quantiles") and p.requires_grad)
    main = sorted(n for n, p in named.items() if not n.endswith(".quantiles") and p.requires_grad)
    return torch.optim.Adam([named[n] for n in main], lr=lr), torch.optim.Adam([named[n] for n in aux], lr=aux_lr)


def autocast_for(precision: str, device: str, cuda_graphs: bool = False):
    """A factory of the context a training step's forward runs in: bf16 autocast over float32
    master weights, TF32 arithmetic (mambaic.precision), or nothing for fp32. Under CUDA graphs
    autocast must not cache its casts of the weights (PyTorch's rule for captured autocast)."""
    from mambaic.precision import arithmetic

    if precision == "bf16":
        return lambda: torch.autocast(device, dtype=torch.bfloat16, cache_enabled=not cuda_graphs)
    return lambda: arithmetic(precision)


def psnr_of(mse: float) -> float:
    return math.inf if mse <= 0 else -10 * math.log10(mse)


@dataclass
class StepResult:
    loss: float
    bpp: float
    mse: float
    aux: float


class GraphedForwardBackward:
    """A training step's forward, loss and backward replayed from one CUDA graph.

    A training step at 256x256 launches tens of thousands of small kernels (the slice loop at
    1/16 of the crop, the recomputing backward of the SS2D cores) and Python launches them more
    slowly than the GPU runs them. Captured once (after a few warm-up passes on a side stream),
    the step replays with one call; the gradients land in the graph's own tensors, rewritten on
    every replay and set as the parameters' ``.grad`` after it (zeroing them before is useless).
    Clipping and the optimisers stay eager: the non-finite-loss check needs the loss on the host
    before the update, and Adam is a handful of fused launches.

    One batch shape per capture (random crops have one); random numbers (the quantisation noise,
    stochastic depth) are drawn anew at each replay, as CUDA graphs do for PyTorch's generator.
    """

    def __init__(self, model, criterion, autocast, warmup: int = 3):
        self.model, self.criterion, self.autocast, self.warmup = model, criterion, autocast, warmup
        self.graph = self.batch = self.terms = None
        self._grads = []  # (parameter, the graph's gradient tensor of it)

    def _pass(self, batch):
        with self.autocast():
            out = self.model(batch)
        terms = self.criterion(out, batch)
        terms["loss"].backward()
        return terms

    def __call__(self, batch: torch.Tensor) -> dict:
        if self.graph is None:
            self._capture(batch)
        elif batch.shape != self.batch.shape:
            raise ValueError(f"GraphedForwardBackward: captured for batches of shape {tuple(self.batch.shape)}, "
                             f"got {tuple(batch.shape)} (use drop_last=True so that every batch is full)")
        self.batch.copy_(batch)
        self.graph.replay()
        for p, grad in self._grads:  # the graph wrote its own tensors: make them the gradients again
            if p.grad is not grad:  # (zero_grad(set_to_none=True) or an eager backward replaced them)
                p.grad = grad
        return self.terms

    def _capture(self, batch: torch.Tensor) -> None:
        gc.collect()  # an eager autograd graph held only by a reference cycle would break the capture
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.batch = batch.clone()

        def clear_grads():  # the captured backward creates them in the graph's memory
            for p in params:
                p.grad = None

        try:
            graph, terms = capture(lambda: self._pass(self.batch), self.warmup, before=clear_grads)
            self.terms = {name: t.detach() for name, t in terms.items()}  # the captured autograd graph may go
        except RuntimeError as error:  # torch.AcceleratorError included
            if "legacy stream" not in str(error) and "StreamCapture" not in str(error):
                raise
            # A parameter's AccumulateGrad node outlives an eager backward while anything holds
            # that autograd graph (a loss kept from an eager step, DDP), and keeps its stream.
            raise RuntimeError(
                "GraphedForwardBackward: the CUDA graph capture failed because an autograd graph of an "
                "eager forward of this model is still alive (a loss or output kept from an eager step); "
                "delete it (or .detach() what you keep) before the first graphed step") from error
        self.graph = graph
        self._grads = [(p, p.grad) for p in params]


def train_step(model, batch, criterion, optimizer, aux_optimizer, clip: float, autocast, skip_together=None,
               graphed: GraphedForwardBackward | None = None) -> StepResult | None:
    """One official step: forward, loss, backward, clipping, Adam; then the auxiliary loss and its
    Adam. A non-finite loss skips the step (as the official script does) and returns None; with
    several processes ``skip_together(bad)`` makes every rank skip when one must (Ranks.any), as
    the gradients' all-reduce needs every rank's backward. With ``graphed``, the forward, loss and
    backward replay from its CUDA graph (which owns the gradients: they are not zeroed)."""
    if graphed is not None:
        aux_optimizer.zero_grad(set_to_none=False)  # the aux gradient adds to the graph's (or a stale one)
        terms = graphed(batch)
    else:
        optimizer.zero_grad(set_to_none=True)
        aux_optimizer.zero_grad(set_to_none=True)
        with autocast():
            out = model(batch)
        terms = criterion(out, batch)
    bad = not torch.isfinite(terms["loss"])
    if skip_together(bad) if skip_together else bad:
        return None
    if graphed is None:
        terms["loss"].backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    aux = _module(model).aux_loss()
    aux.backward()
    aux_optimizer.step()
    return StepResult(*(float(t.detach()) for t in (terms["loss"], terms["bpp"], terms["mse"], aux)))


def _module(model):
    return model.module if hasattr(model, "module") else model


@torch.no_grad()
def validate(model, loader, criterion, autocast, device) -> dict:
    """Sums of loss, bpp and PSNR over whole images (padded to 128 by replication, cropped back),
    and their count under "images" (sums, so that ranks holding shares of the images add up)."""
    model = _module(model)  # no gradient all-reduce here: each rank scores its own images
    model.eval()
    totals = {"loss": 0.0, "bpp": 0.0, "psnr": 0.0, "images": 0}
    for x in loader:
        x = x.to(device)
        padded, _ = pad_to_multiple(x)
        with autocast():
            out = model(padded)
        out = {"x_hat": out["x_hat"][..., : x.shape[-2], : x.shape[-1]].clamp(0, 1), "likelihoods": out["likelihoods"]}
        terms = criterion(out, x)
        # bpp over the original pixels: the padding's likelihoods are coded too
        totals["loss"] += float(terms["loss"])
        totals["bpp"] += float(terms["bpp"])
        totals["psnr"] += psnr_of(float(terms["mse"]))
        totals["images"] += 1
    model.train()
    return totals


def checkpoint(model, optimizer, aux_optimizer, scheduler, epoch: int, loss: float) -> dict:
    """What the official train.py saves (its keys, its layout)."""
    return {"epoch": epoch, "state_dict": _module(model).state_dict(), "loss": loss, "optimizer": optimizer.state_dict(),
            "aux_optimizer": aux_optimizer.state_dict(), "lr_scheduler": scheduler.state_dict()}  # fmt: skip
