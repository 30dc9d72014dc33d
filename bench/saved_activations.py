"""What a training step keeps for its backward, by module: the bytes of every distinct tensor
autograd saves during the forward and loss, charged to the innermost module running when it was
saved (functional calls inside a module count as that module's).

    python bench/saved_activations.py [--batch 2] [--patch 256] [--backend cpu]

The step is bench/train_step.py's model and loss (random weights, random crops of --patch);
on the CPU by default (the `cpu` backend's fused core, which keeps only its inputs, as `cuda`'s
does). Parameters count too when an op saves them (a few MiB).
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` importable from a checkout

from bench.models import CONFIG_HELP, random_model  # noqa: E402


def saved_by_module(model, x, criterion) -> collections.Counter:
    stack, seen, by = [], set(), collections.Counter()
    def enter(module, inputs):
        stack.append(type(module).__name__)

    def leave(module, inputs, output):  # returns None: a forward hook's value would replace the output
        stack.pop()

    hooks = [h for m in model.modules() for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            by[stack[-1] if stack else "loss"] += t.untyped_storage().nbytes()
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            criterion(model(x), x)["loss"]
    finally:
        for h in hooks:
            h.remove()
    return by


def main(argv=None) -> int:
    import mambaic_kernels as mk
    from mambaic import training as T

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config", help=CONFIG_HELP)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = random_model(args.config).to(args.device).train()
    x = torch.rand(args.batch, 3, args.patch, args.patch, device=args.device)
    with mk.use_backend(args.backend):
        by = saved_by_module(model, x, T.RateDistortionLoss(0.013))
    total = sum(by.values())
    print(f"saved for the backward: {total / 2**30:.2f} GiB (batch {args.batch} of {args.patch}x{args.patch}, "
          f"backend {args.backend})")
    for name, size in by.most_common(12):
        print(f"{size / 2**20:10.1f} MiB {100 * size / total:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
