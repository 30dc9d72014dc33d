"""A run that learns: MambaIC trained from random weights on real photographs, then evaluated.

    python bench/learning_run.py photos PHOTO_DIR          # write scikit-image's photographs (once, anywhere)
    python bench/learning_run.py run PHOTO_DIR OUT_DIR --minutes 7

`run` tiles the training photographs (TRAIN below: overlapping 320x320 tiles and their mirror
images, each epoch a random 256x256 crop of each tile), trains with `mambaic train` (the official
recipe) for --minutes from a random initialisation, validates on the held-out photographs (HELD_OUT)
every epoch, then codes them for real with `mambaic eval` (the last checkpoint; the best one is
chosen on those same images). OUT_DIR gets log.csv, steps.csv, eval.json / eval.csv, the loss
curve (learning.png) and summary.json. With --timing-images N it also times `mambaic eval` over N
768x512 crops of the photographs (real coding). This shows that the loop works, not the paper's
quality: that takes days of training on a large data set.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

TRAIN = ("astronaut", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "stereo_motorcycle")
HELD_OUT = ("coffee", "chelsea")
TILE, STRIDE = 320, 160


def write_photos(folder: Path) -> None:
    """scikit-image's colour photographs as PNG files (the device may lack scikit-image)."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    for name in TRAIN + HELD_OUT:
        images = getattr(data, name)()
        for k, rgb in enumerate(images if isinstance(images, tuple) else (images,)):
            if rgb.ndim == 3 and rgb.shape[2] == 3:
                Image.fromarray(rgb).save(folder / f"{name}{'_' + str(k) if k else ''}.png")
    print(f"{folder}: {len(list(folder.glob('*.png')))} photographs")


def _photos(folder: Path, names) -> list[tuple[str, np.ndarray]]:
    found = [(p.stem, np.asarray(Image.open(p).convert("RGB"))) for p in sorted(folder.glob("*.png"))
             if any(p.stem == n or p.stem.startswith(n + "_") for n in names)]  # fmt: skip
    if not found:
        raise SystemExit(f"{folder}: none of {names} (run `{sys.argv[0]} photos {folder}` first)")
    return found


def make_folders(photo_dir: Path, work: Path, timing_images: int) -> dict:
    train, val, timing = work / "train", work / "val", work / "timing"
    for d in (train, val, timing):
        d.mkdir(parents=True, exist_ok=True)
    tiles = 0
    for name, rgb in _photos(photo_dir, TRAIN):
        H, W = rgb.shape[:2]
        for top in range(0, max(H - TILE, 0) + 1, STRIDE):
            for left in range(0, max(W - TILE, 0) + 1, STRIDE):
                tile = rgb[top : top + TILE, left : left + TILE]
                Image.fromarray(tile).save(train / f"{name}_{top}_{left}.png")
                Image.fromarray(tile[:, ::-1].copy()).save(train / f"{name}_{top}_{left}_m.png")
                tiles += 2
    for name, rgb in _photos(photo_dir, HELD_OUT):
        Image.fromarray(rgb).save(val / f"{name}.png")
    # 768x512 crops for the evaluation timing: real photographs, resized where smaller
    sources = [rgb for _, rgb in _photos(photo_dir, TRAIN + HELD_OUT)]
    rng = np.random.default_rng(0)
    for i in range(timing_images):
        rgb = sources[i % len(sources)]
        scale = max(512 / rgb.shape[0], 768 / rgb.shape[1], 1.0)
        img = Image.fromarray(rgb)
        if scale > 1:
            img = img.resize((int(np.ceil(rgb.shape[1] * scale)), int(np.ceil(rgb.shape[0] * scale))), Image.BICUBIC)
        top, left = int(rng.integers(0, img.height - 512 + 1)), int(rng.integers(0, img.width - 768 + 1))
        img.crop((left, top, left + 768, top + 512)).save(timing / f"crop{i:02d}.png")
    return {"train": train, "val": val, "timing": timing, "tiles": tiles}


def mambaic(*args) -> float:
    """Run a `mambaic` command (its output passes through); its wall time in seconds."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mambaic", *map(str, args)], check=True)
    return time.perf_counter() - t0


def plot(out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(out / "steps.csv") as f:
        steps = list(csv.DictReader(f))
    with open(out / "log.csv") as f:
        epochs = list(csv.DictReader(f))
    step = np.array([int(r["step"]) for r in steps])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key, label in zip(axes, ("loss", "bpp", "psnr"), ("loss (lambda 255^2 MSE + bpp)", "bpp", "PSNR (dB)")):
        values = np.array([float(r[key]) for r in steps])
        ax.plot(step, values, alpha=0.25, color="C0", label="training batch")
        k = min(25, len(values))
        ax.plot(step[k - 1 :], np.convolve(values, np.ones(k) / k, mode="valid"), color="C0", label=f"mean of {k}")
        ax.plot([int(r["steps"]) for r in epochs], [float(r[f"val_{key}"]) for r in epochs], "o-", color="C3",
                label="held-out photographs")  # fmt: skip
        ax.set(xlabel="step", ylabel=label)
        if key == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("MambaIC from random weights, official recipe, batch 8 of 256x256 crops")
    fig.tight_layout()
    path = out / "learning.png"
    fig.savefig(path, dpi=110)
    return path


def run(args) -> None:
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    folders = make_folders(Path(args.photo_dir), work, args.timing_images)
    print(f"{folders['tiles']} training tiles; held-out: {', '.join(HELD_OUT)}", flush=True)
    run_dir = work / "run"
    train_s = mambaic("train", folders["train"], "--val", folders["val"], "--out", run_dir, "--lambda", args.lmbda,
                      "--epochs", 100000, "--max-minutes", args.minutes, "--workers", 4, "--precision", args.precision, *args.train_args.split())  # fmt: skip
    for name in ("log.csv", "steps.csv"):
        (out / name).write_bytes((run_dir / name).read_bytes())
    ckpt = run_dir / "checkpoint_last.pth.tar"
    mambaic("eval", folders["val"], "--checkpoint", ckpt, "--json", out / "eval.json", "--csv", out / "eval.csv",
            "--name", f"10-minute run, lambda {args.lmbda}")  # fmt: skip
    summary = {"train_seconds": train_s, "minutes": args.minutes, "lambda": args.lmbda, "precision": args.precision,
               "eval": json.loads((out / "eval.json").read_text())}  # fmt: skip
    if args.timing_images:
        mambaic("eval", folders["timing"], "--checkpoint", ckpt, "--json", out / "timing.json")  # warm-up (build, tune)
        summary["timing_wall_s"] = mambaic("eval", folders["timing"], "--checkpoint", ckpt, "--json", out / "timing.json")
        summary["timing"] = json.loads((out / "timing.json").read_text())
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{plot(out)}; {out / 'summary.json'}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("photos", help="write scikit-image's photographs to a folder")
    p.add_argument("photo_dir")
    r = sub.add_parser("run", help="train, evaluate, plot")
    r.add_argument("photo_dir")
    r.add_argument("out")
    r.add_argument("--work", default="/tmp/mambaic-learning", help="tiles, checkpoints (large; not copied to OUT)")
    r.add_argument("--minutes", type=float, default=10)
    r.add_argument("--lambda", dest="lmbda", type=float, default=0.013)
    r.add_argument("--precision", default="fp32")
    r.add_argument("--train-args", default="", help="more `mambaic train` options, e.g. a small model for a smoke run")
    r.add_argument("--timing-images", type=int, default=0, metavar="N")
    args = parser.parse_args(argv)
    if args.command == "photos":
        write_photos(Path(args.photo_dir))
    else:
        run(args)


if __name__ == "__main__":
    main()
