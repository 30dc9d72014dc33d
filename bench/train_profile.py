"""Where the official training step's time goes: forward, backward and optimisers timed apart
with CUDA events, the memory peaks, then torch.profiler's table of one more step.

    python bench/train_profile.py [--precision fp32|bf16] [--rows 40]

The step is bench/train_step.py's (batch 8 of 256x256 photograph crops, the official loss and
optimisers), on the default backend (MAMBAIC_BACKEND). GPU only.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` importable from a checkout

from bench.train_step import photo_batch  # noqa: E402


def main(argv=None) -> None:
    import mambaic
    from mambaic import training as T

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32")
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench/train_profile.py needs a GPU")
    torch.manual_seed(0)
    model = mambaic.random_model(0).cuda().train()
    opt, aux_opt = T.optimizers(model)
    crit, autocast = T.RateDistortionLoss(0.013), T.autocast_for(args.precision, "cuda")
    x = photo_batch(8, 256).cuda()
    for _ in range(3):
        T.train_step(model, x, crit, opt, aux_opt, 1.0, autocast)
    torch.cuda.synchronize()
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
    walls, parts = [], []
    for _ in range(args.iters):
        opt.zero_grad(set_to_none=True)
        aux_opt.zero_grad(set_to_none=True)
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        ev[0].record()
        with autocast():
            out = model(x)
        loss = crit(out, x)["loss"]
        ev[1].record()
        forward_peak = torch.cuda.max_memory_allocated() / 2**20
        loss.backward()
        ev[2].record()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        model.aux_loss().backward()
        aux_opt.step()
        ev[3].record()
        torch.cuda.synchronize()
        walls.append((time.perf_counter() - t0) * 1e3)
        parts.append((ev[0].elapsed_time(ev[1]), ev[1].elapsed_time(ev[2]), ev[2].elapsed_time(ev[3]), forward_peak,
                      torch.cuda.max_memory_allocated() / 2**20))  # fmt: skip
    med = [statistics.median(p[i] for p in parts) for i in range(5)]
    print(f"{args.precision}: step wall {statistics.median(walls):.1f} ms (median of {args.iters}); forward {med[0]:.1f}, "
          f"backward {med[1]:.1f}, clipping + optimisers {med[2]:.1f} ms; peak {med[3]:,.0f} MiB after the forward, "
          f"{med[4]:,.0f} MiB in the step")  # fmt: skip
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        T.train_step(model, x, crit, opt, aux_opt, 1.0, autocast)
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    print(f"GPU kernels: {sum(e.self_device_time_total for e in kernels) / 1e3:.1f} ms in {sum(e.count for e in kernels)} launches")
    print(events.table(sort_by="self_device_time_total", row_limit=args.rows, max_name_column_width=70))


if __name__ == "__main__":
    main()
