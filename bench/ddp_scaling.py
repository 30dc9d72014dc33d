"""Step time, images per second and scaling efficiency of the runs bench/ddp_scaling.sh wrote.

    python bench/ddp_scaling.py DIR [--batch 8]

A step's time is the median interval between consecutive steps of the same epoch in
ddp_steps_g<G>.csv, from the second epoch on (the first compiles and tunes).
"""

import argparse
import csv
import re
import statistics
from pathlib import Path


def step_seconds(path: Path) -> float:
    with open(path) as f:
        t = [(int(r["epoch"]), float(r["seconds"])) for r in csv.DictReader(f)]
    gaps = [b[1] - a[1] for a, b in zip(t, t[1:]) if a[0] == b[0] and a[0] >= 1]
    if not gaps:
        raise SystemExit(f"{path}: no two steps in one epoch after the first")
    return statistics.median(gaps)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir")
    parser.add_argument("--batch", type=int, default=8, help="crops per GPU per step")
    args = parser.parse_args(argv)
    runs = sorted((int(re.search(r"g(\d+)", p.stem).group(1)), p) for p in Path(args.dir).glob("ddp_steps_g*.csv"))
    if not runs:
        raise SystemExit(f"{args.dir}: no ddp_steps_g<G>.csv")
    base = None
    print("| GPUs | s per step | images / s | scaling efficiency | peak MiB (rank 0) |\n|---|---|---|---|---|")
    for g, path in runs:
        s = step_seconds(path)
        rate = args.batch * g / s
        base = base or (rate / g if g == 1 else None)
        with open(path.with_name(f"ddp_log_g{g}.csv")) as f:
            peak = max((float(r["peak_mib"]) for r in csv.DictReader(f) if r.get("peak_mib")), default=float("nan"))
        eff = f"{rate / (g * base):.0%}" if base else "-"
        print(f"| {g} | {s:.3f} | {rate:.1f} | {eff} | {peak:,.0f} |")


if __name__ == "__main__":
    main()
