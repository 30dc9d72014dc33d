"""bench/learning_run.py's data preparation and plot, bench/ddp_scaling.py's arithmetic (CPU)."""

import csv

import numpy as np
from PIL import Image

from bench import ddp_scaling, learning_run


def _write(path, fields, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def test_learning_run_folders_and_plot(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (500, 650, 3), dtype=np.uint8)).save(photos / "astronaut.png")
    Image.fromarray(rng.integers(0, 256, (300, 451, 3), dtype=np.uint8)).save(photos / "chelsea.png")
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(photos / "unrelated.png")
    folders = learning_run.make_folders(photos, tmp_path / "work", timing_images=3)
    # tiles of 320 every 160 px: 2 rows x 3 columns, each with its mirror image
    assert folders["tiles"] == 12 == len(list(folders["train"].glob("*.png")))
    assert [p.name for p in folders["val"].iterdir()] == ["chelsea.png"]
    crops = sorted(folders["timing"].glob("*.png"))
    assert len(crops) == 3 and all(Image.open(p).size == (768, 512) for p in crops)  # chelsea upscaled to fit

    run = tmp_path / "run"
    run.mkdir()
    _write(run / "steps.csv", ["step", "epoch", "loss", "bpp", "psnr"],
           [{"step": i + 1, "epoch": i // 5, "loss": 100 / (i + 1), "bpp": 2 - i / 20, "psnr": 10 + i / 3} for i in range(20)])
    _write(run / "log.csv", ["epoch", "steps", "val_loss", "val_bpp", "val_psnr"],
           [{"epoch": e, "steps": 5 * (e + 1), "val_loss": 30 / (e + 1), "val_bpp": 1.5, "val_psnr": 12 + e} for e in range(4)])
    png = learning_run.plot(run)
    assert png.exists() and Image.open(png).size[0] > 1000


def test_ddp_scaling_table(tmp_path, capsys):
    for g, step in ((1, 1.0), (2, 1.25)):
        # epoch 0 slow (compilation), then steady steps; a validation gap between epochs is ignored
        rows, t = [], 0.0
        for epoch in range(3):
            t += 30 if epoch == 0 else 5
            for _ in range(4):
                t += step
                rows.append({"step": len(rows) + 1, "epoch": epoch, "seconds": t})
        _write(tmp_path / f"ddp_steps_g{g}.csv", ["step", "epoch", "seconds"], rows)
        _write(tmp_path / f"ddp_log_g{g}.csv", ["epoch", "peak_mib"], [{"epoch": 0, "peak_mib": 1000.0 * g}])
    ddp_scaling.main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "| 1 | 1.000 | 8.0 | 100% | 1,000 |" in out
    assert "| 2 | 1.250 | 12.8 | 80% | 2,000 |" in out
