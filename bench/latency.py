"""Latency and peak memory of the full MambaIC model, every backend side by side.

    python bench/latency.py --res 2K
    python bench/latency.py --res kodak 1080p 2K 4K --json out.json --plot out.png

For each resolution and backend, with random weights (the official default configuration):

- forward: ``model(x)``, the training graph's likelihoods, under ``torch.no_grad``;
- compress: ``model.compress(x)``, network and entropy coding to real strings;
- decompress: ``model.decompress(strings, shape)``.

Method: the model and inputs are built outside the timed region; each stage is run ``--warmup``
times (Triton autotuning and compilation happen there), then ``--iters`` times, synchronised,
timed with CUDA events on a GPU (``time.perf_counter`` on CPU); we report the median and the
p20-p80 spread. Peak memory is ``torch.cuda.max_memory_allocated`` after a reset before each
stage (on CPU: the process's peak RSS, VmHWM, reset through /proc/self/clear_refs). One profiled
forward per (resolution, backend) attributes the time to modules (analysis g_a, hyperprior
h_a/h_s and z coding, context model = the slice loop, synthesis g_s) by CUDA events in module
hooks, and to ops (the SS2D core and the scans inside it, window attention, the rest) by torch.profiler ranges
that the kernels open while a profiler runs. Sizes are padded to multiples of 128, as the codec
pads them. An out-of-memory error is reported as OOM and the run goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` importable from a checkout

from bench.timing import git_commit, kernel_ms  # noqa: E402
from mambaic.precision import PRECISIONS  # noqa: E402

RESOLUTIONS = {"kodak": (768, 512), "1080p": (1920, 1080), "2K": (2048, 1536), "4K": (3840, 2160)}
STAGES = ("forward", "compress", "decompress")
# Model parts for the breakdown: module name prefixes -> part.
PARTS = {"analysis": ("g_a",), "hyperprior": ("h_a", "h_mean_s", "h_scale_s"), "synthesis": ("g_s",)}
# Share of time per op's profiler range. The SS2D core is one op (ss2d_core); the scans inside it
# open their own nested range, reported as "of which scan" and not subtracted again from "rest".
OP_RANGES = {"ss2d core": "ss2d_core", "window attention": "window_attention"}
NESTED_RANGES = {"of which scan": "selective_scan"}
PAD = 128


def parse_resolution(text: str) -> tuple[str, int, int]:
    if text in RESOLUTIONS:
        return (text, *RESOLUTIONS[text])
    m = re.fullmatch(r"(\d+)x(\d+)", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise argparse.ArgumentTypeError(
            f"--res: {text!r} is not a resolution; use {', '.join(RESOLUTIONS)} or WxH (e.g. 1280x720)")
    return (text, int(m.group(1)), int(m.group(2)))


def padded(n: int) -> int:
    return math.ceil(n / PAD) * PAD


# ---------------------------------------------------------------- timing and memory, per device


class Clock:
    """Times a callable and reads peak memory, with CUDA events on a GPU and wall time on CPU."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS

    def peak_mib(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def time_ms(self, fn) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3


# Peak memory of one fp32 forward, batch 1, official configuration: MiB = fixed + per megapixel of
# the padded input, per (backend, device), fitted to peaks measured on 2026-11-29 (bench/RESULTS.md:
# H200 at 768x512, 2048x1536 and 3840x2176; the 2-core CPU machine at 768x512 and 2048x1536).
# Used only to skip a size that cannot fit before it is tried (a run the kernel kills for memory
# says nothing); never reported as a measurement. Batch scales the per-megapixel part.
PEAK_MIB = {
    ("cpu", "cpu"): (2_280, 1_530),  # 2,878 MiB / 7,095 MiB (e0dc869)
    ("torch", "cpu"): (1_500, 13_500),  # like its CUDA peak: every (batch, 4, dim, L) copy kept
    ("torch", "cuda"): (500, 13_500),  # 42.2 GiB at 2048x1536 (H100, 2026-11-25)
    ("triton", "cuda"): (520, 2_630),  # 1,543 / 8,708 / 22,267 MiB
    ("cuda", "cuda"): (510, 2_410),  # auto: 1,461 / 8,099 / 20,664 MiB (23d12fe)
    ("vmamba", "cuda"): (510, 9_110),  # 4,068 / 28,955 / 76,062 MiB
}


def estimated_peak_mib(backend: str, device: str, width: int, height: int, batch: int) -> float | None:
    """The forward's expected peak (MiB) from PEAK_MIB, None for a backend without figures."""
    name = backend.removesuffix("+compile")
    if name == "auto":
        name = "cuda" if device == "cuda" else "cpu"
    if (name, device) not in PEAK_MIB:
        return None
    fixed, per_mpix = PEAK_MIB[name, device]
    return fixed + per_mpix * batch * width * height / 1e6


def available_mib(device: str) -> float:
    """Memory a run can still take: free GPU memory, or the host's MemAvailable."""
    if device == "cuda":
        return torch.cuda.mem_get_info()[0] / 2**20
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) / 1024


def spread(times: list[float]) -> dict:
    if len(times) >= 2:
        q = statistics.quantiles(times, n=10)
        lo, hi = q[1], q[7]
    else:
        lo = hi = times[0]
    return {"p50_ms": statistics.median(times), "p20_ms": lo, "p80_ms": hi, "runs": len(times)}


# ---------------------------------------------------------------- breakdowns


def module_breakdown(model, x, clock: Clock) -> dict:
    """ms per model part in one forward: CUDA events (or wall time) in pre/post hooks."""
    spans: dict[str, list] = {}
    handles = []

    def now():
        if clock.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    for part, names in PARTS.items():
        for name in names:
            module = getattr(model, name)
            handles.append(module.register_forward_pre_hook(lambda m, a, p=part: spans.setdefault(p, []).append([now()])))
            handles.append(module.register_forward_hook(lambda m, a, o, p=part: spans[p][-1].append(now())))
    try:
        clock.sync()
        start = now()
        model(x)
        end = now()
        clock.sync()
    finally:
        for h in handles:
            h.remove()

    def ms(a, b):
        return a.elapsed_time(b) if clock.cuda else (b - a) * 1e3

    total = ms(start, end)
    out = {part: sum(ms(a, b) for a, b in pairs) for part, pairs in spans.items()}
    # everything that is neither transform nor hyperprior: the slice loop with its context model
    out["context model"] = total - sum(out.values())
    out["total"] = total
    return out


def op_breakdown(model, x, device: str) -> dict:
    """Share of device time (CPU time on CPU) spent inside each op's profiler range."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        model(x)
        if device == "cuda":
            torch.cuda.synchronize()
    events = prof.key_averages()
    attr = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"

    def in_range(evt_name: str) -> float:
        return sum(getattr(e, "device_time_total" if device == "cuda" else "cpu_time_total", 0)
                   for e in events if e.key == evt_name)

    total = sum(getattr(e, attr, 0) for e in events if not e.key.startswith("mambaic_kernels::")
                and not e.key.startswith("ProfilerStep"))
    out = {}
    for label, ops in OP_RANGES.items():
        ops = (ops,) if isinstance(ops, str) else ops
        out[label] = sum(in_range(f"mambaic_kernels::{op}") for op in ops)
    out["rest"] = max(total - sum(out.values()), 0.0)
    for label, op in NESTED_RANGES.items():
        out[label] = in_range(f"mambaic_kernels::{op}")
    return {k: (100.0 * v / total if total else float("nan")) for k, v in out.items()}


# ---------------------------------------------------------------- one (resolution, backend)


def in_precision(model, precision: str, weights: dict) -> None:
    """Put the model in ``precision``, from its float32 ``weights`` (a half-precision cast rounds them)."""
    model.set_precision("fp32").load_state_dict(weights)
    model.set_precision(precision)


def run_one(model, x, backend: str, args, clock: Clock, variant: str | None = None) -> dict:
    """Every stage of args.stages on one backend; with a variant, through torch.compile(model)
    ("compile": the forward alone; compress and decompress drive the entropy coder from Python) or
    CUDA graphs ("graph": mambaic.CUDAGraphForward(model) for the forward, the network parts of
    compress and decompress replayed under model.use_cuda_graphs())."""
    import mambaic
    import mambaic_kernels as mk
    from mambaic_kernels import _backend

    record = {"backend": backend + (f"+{variant}" if variant else ""), "precision": model.precision}
    stages = ["forward"] if variant == "compile" else args.stages
    run_forward = model
    if variant == "compile":
        torch._dynamo.reset()  # a fresh compilation for this backend
        run_forward = torch.compile(model)
    elif variant == "graph":
        run_forward = mambaic.CUDAGraphForward(model)
    model.use_cuda_graphs(variant == "graph")
    with mk.use_backend(backend), torch.no_grad(), _backend.recording() as used:
        record["ops"] = used  # which backend ran each op (filled as the stages run)
        strings = shape = None

        def forward():
            run_forward(x)

        def compress():
            nonlocal strings, shape
            out = model.compress(x)
            strings, shape = out["strings"], out["shape"]

        def decompress():
            model.decompress(strings, shape)

        for stage, fn in zip(STAGES, (forward, compress, decompress)):
            if stage not in stages:
                continue
            try:
                clock.sync()
                clock.reset_peak()
                fn()  # the first warm-up compiles and autotunes: never a measurement
                # a graph's memory is allocated at capture (its eager warm-ups) and held in its
                # pool, which max_memory_allocated no longer counts once captured: its peak is this
                capture_peak = clock.peak_mib() if variant == "graph" else 0.0
                if variant:  # traced or captured code records nothing: the ops as one eager forward dispatches them
                    model(x)
                clock.sync()
                clock.reset_peak()
                first = clock.time_ms(fn)
                peak = max(clock.peak_mib(), capture_peak)
                if first > args.stage_budget * 1e3:
                    times = [first]  # a slow backend: one warm run is the measurement
                else:
                    for _ in range(max(args.warmup - 1, 0)):
                        fn()
                    clock.sync()
                    clock.reset_peak()
                    times = [clock.time_ms(fn) for _ in range(args.iters)]
                    peak = max(clock.peak_mib(), capture_peak)
                record[stage] = {**spread(times), "peak_mib": peak}
                if x.device.type == "cuda" and variant != "graph":  # a graph replays the same kernels
                    record[stage]["kernel_ms"] = kernel_ms(fn, iters=3)
            except torch.cuda.OutOfMemoryError:
                record[stage] = "OOM"
                strings = None
                torch.cuda.empty_cache()
            args.progress()
            if stage == "compress" and strings is None:
                record["decompress"] = "skipped (compress failed)"
                args.progress()
                break
        if isinstance(record.get("forward"), dict) and not variant:  # module hooks see the eager model
            try:
                # each breakdown costs a forward, and the profiler ~10 us per kernel it records:
                # a backend that launches hundreds of thousands of tiny kernels (torch's scan on
                # a GPU) is not broken down
                if record["forward"]["p50_ms"] <= args.profile_limit * 1e3:
                    record["modules_ms"] = module_breakdown(model, x, clock)
                    record["ops_pct"] = op_breakdown(model, x, x.device.type)
                else:
                    record["ops_pct"] = f"skipped (forward over --profile-limit {args.profile_limit:g} s)"
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
    model.use_cuda_graphs(False)  # drops the captures and their memory
    return record


# ---------------------------------------------------------------- output


def machine(device: str) -> dict:
    info = {"device": torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads)", "torch": torch.__version__, "cuda": torch.version.cuda,
            "commit": git_commit(), "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = "not installed"
    return info


def label(rec: dict) -> str:
    """A record's name in tables and plots: its backend, and its precision unless fp32."""
    precision = rec.get("precision", "fp32")
    return rec["backend"] if precision == "fp32" else f"{rec['backend']} {precision}"


def fmt_stage(rec) -> str:
    if rec is None:
        return "-"
    if not isinstance(rec, dict):
        return str(rec)
    text = f"{rec['p50_ms']:.1f} ({rec['p20_ms']:.1f}-{rec['p80_ms']:.1f})"
    return text + (f" [GPU {rec['kernel_ms']:.1f}]" if "kernel_ms" in rec else "")


def table(results: list[dict], header: dict) -> str:
    lines = [f"device {header['device']} | torch {header['torch']} | triton {header['triton']} | "
             f"CUDA {header['cuda']} | commit {header['commit']} | precision {header['precision']} | batch {header['batch']}", ""]
    cols = ["res", "backend", "forward ms", "compress ms", "decompress ms", "peak MiB fwd/comp/dec", "speedup vs torch (fwd)",
            "memory vs torch (fwd)"]
    lines += ["Times: median (p20-p80) of wall time per call, and [GPU kernel time] summed by torch.profiler "
              "over the call's kernels where it ran on a GPU.", ""]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for res in results:
        for r in res["backends"]:
            base = next((b for b in res["backends"] if b["backend"] == "torch" and b.get("precision") == r.get("precision")), None)
            peaks = "/".join(f"{r[s]['peak_mib']:.0f}" if isinstance(r.get(s), dict) else "-" for s in STAGES)
            speed = mem = "-"
            if base and isinstance(base.get("forward"), dict) and isinstance(r.get("forward"), dict):
                speed = f"{base['forward']['p50_ms'] / r['forward']['p50_ms']:.2f}x"
                mem = f"{r['forward']['peak_mib'] / base['forward']['peak_mib']:.2f}x"
            lines.append(f"| {res['name']} {res['width']}x{res['height']} | {label(r)} | {fmt_stage(r.get('forward'))} | "
                         f"{fmt_stage(r.get('compress'))} | {fmt_stage(r.get('decompress'))} | {peaks} | {speed} | {mem} |")
    lines += ["", "Breakdown of one forward (ms per module; % of time per op):", ""]
    for res in results:
        for r in res["backends"]:
            if "modules_ms" in r or "ops_pct" in r:
                mods = ", ".join(f"{k} {v:.1f}" for k, v in r.get("modules_ms", {}).items()) or "modules skipped"
                pct = r.get("ops_pct", {})
                ops = ", ".join(f"{k} {v:.0f}%" for k, v in pct.items()) if isinstance(pct, dict) else f"ops {pct}"
                lines.append(f"- {res['name']} {label(r)}: {mods}; {ops}")
    return "\n".join(lines)


def plot(results: list[dict], path: str, header: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = sorted({label(r) for res in results for r in res["backends"]})
    for b in labels:
        px, t, m = [], [], []
        for res in results:
            r = next((r for r in res["backends"] if label(r) == b), None)
            if r and isinstance(r.get("forward"), dict):
                px.append(res["width"] * res["height"] / 1e6)
                t.append(r["forward"]["p50_ms"])
                m.append(r["forward"]["peak_mib"] / 1024)
        (line,) = ax_t.plot(px, t, "o-", label=b)
        ax_m.plot(px, m, "o-", label=b)
        for res in results:  # out of memory: a cross at the top of both panels, in the line's colour
            r = next((r for r in res["backends"] if label(r) == b), None)
            if r and r.get("forward") == "OOM":
                for ax in (ax_t, ax_m):
                    ax.annotate(f"{b} OOM", (res["width"] * res["height"] / 1e6, 0.97), xycoords=("data", "axes fraction"),
                                color=line.get_color(), ha="center", va="top", fontsize=8)
                    ax.plot([res["width"] * res["height"] / 1e6], [0.9], "x", color=line.get_color(), markersize=9,
                            transform=ax.get_xaxis_transform())
    ax_t.set(xlabel="megapixels", ylabel="forward latency (ms)", title="latency", yscale="log")
    ax_m.set(xlabel="megapixels", ylabel="peak memory (GiB)", title="peak memory (forward)")
    for ax in (ax_t, ax_m):
        ax.grid(alpha=0.3)
        ax.legend()
    if header:
        fig.suptitle(f"MambaIC full model, {header['precision']}, batch {header['batch']}: {header['device']}, "
                     f"torch {header['torch']}, commit {header['commit']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--res", nargs="+", type=parse_resolution, default=[parse_resolution("2K")],
                        help="kodak (768x512), 1080p, 2K (2048x1536), 4K (3840x2160) or WxH; several at once")
    parser.add_argument("--backend", nargs="+", default=None,
                        help="backends to compare (default: every available one, plus vmamba when importable); "
                             "auto: each op on the fastest backend that takes it, as users run it")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["fp32"],
                        help="precision modes of the transforms (MambaIC.set_precision), several side by side (default fp32)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs per stage, at least 1: the first compiles (default: 2 on GPU, 1 on CPU)")
    parser.add_argument("--iters", type=int, default=None, help="timed runs per stage (default: 10 on GPU, 3 on CPU)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", metavar="OUT.json")
    parser.add_argument("--plot", metavar="OUT.png")
    parser.add_argument("--config", default=None,
                        help="model size as N,M,d0,d1,d2,d3 (default: the official 128,320,2,2,9,2); for quick tests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stage-budget", type=float, default=20.0, metavar="S",
                        help="a stage whose first warm run takes longer than S seconds is timed by that run alone")
    parser.add_argument("--profile-limit", type=float, default=None, metavar="S",
                        help="profile the op breakdown only when a forward takes at most S seconds "
                             "(default: 3 on a GPU, no limit on CPU)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                        help="stages to time (default: all; decompress needs compress)")
    parser.add_argument("--ignore-memory-estimate", action="store_true",
                        help="run every size, even one whose expected peak exceeds the memory available")
    parser.add_argument("--compile", action="store_true",
                        help="also time each backend's forward through torch.compile(model), beside eager")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="also time each backend with CUDA graphs, beside eager: the forward (mambaic.CUDAGraphForward), "
                             "compress and decompress (model.use_cuda_graphs())")
    parser.add_argument("--max-seconds", type=float, default=60.0, metavar="S",
                        help="skip larger resolutions for a backend whose forward took longer than S seconds")
    args = parser.parse_args(argv)

    import mambaic
    from mambaic_kernels import _backend

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible; use --device cpu")
    if device == "cpu":
        print("No GPU: timing the CPU with wall-clock time, memory as peak RSS (VmHWM).", file=sys.stderr)
    args.warmup = args.warmup if args.warmup is not None else (2 if device == "cuda" else 1)
    args.iters = args.iters if args.iters is not None else (10 if device == "cuda" else 3)
    if args.profile_limit is None:
        args.profile_limit = 3.0 if device == "cuda" else float("inf")
    if "decompress" in args.stages and "compress" not in args.stages:
        parser.error("--stages: decompress decodes the strings that compress writes; add compress")
    if args.batch < 1 or args.iters < 1 or args.warmup < 0:
        parser.error("--batch and --iters must be >= 1 and --warmup >= 0")
    if args.cuda_graphs and device != "cuda":
        parser.error("--cuda-graphs: CUDA graphs need a GPU (--device cuda)")

    meta = dict(device=device, dtype=torch.float32, d_state=16, window=8, head_dim=16)
    known = list(_backend.BACKENDS)
    if args.backend:
        for b in args.backend:
            if b == "auto":  # per op, the fastest backend that takes it (the record lists which ran)
                continue
            if b not in known:
                parser.error(f"--backend: {b!r} is not a backend; choose from {', '.join(known)}")
            reason = next((r for op in _backend.OPS if (r := _backend.why_unavailable(op, b, **meta))), None)
            if reason:
                parser.error(f"--backend {b}: {reason}")
        backends = args.backend
    else:
        backends = [b for b in known if all(_backend.why_unavailable(op, b, **meta) is None for op in _backend.OPS)]
        skipped = {b: next(r for op in _backend.OPS if (r := _backend.why_unavailable(op, b, **meta)))
                   for b in known if b not in backends}
        for b, r in skipped.items():
            print(f"backend {b}: unavailable ({r})", file=sys.stderr)

    torch.manual_seed(args.seed)
    if args.config:
        N, M, *depths = (int(v) for v in args.config.split(","))
        model = mambaic.MambaIC(N=N, M=M, depths=tuple(depths))
    else:
        model = mambaic.MambaIC()
    model = model.to(device).eval()
    model.update(force=True)
    weights = {k: v.to("cpu", copy=True) for k, v in model.state_dict().items()}  # the float32 weights

    from tqdm import tqdm

    header = {**machine(device), "precision": " ".join(args.precision), "batch": args.batch, "warmup": args.warmup, "iters": args.iters,
              "command": " ".join(["python bench/latency.py"] + (argv if argv is not None else sys.argv[1:]))}
    results = []
    too_slow = {}  # backend -> why larger resolutions are skipped
    args.res = sorted(args.res, key=lambda r: r[1] * r[2])  # small first, so a slow backend stops early
    args.variants = [v for v, on in (("compile", args.compile), ("graph", args.cuda_graphs)) if on]
    steps = len(args.precision) * (len(args.stages) + len(args.variants))  # progress steps per (resolution, backend)
    total = len(args.res) * len(backends) * steps
    with tqdm(total=total, desc="latency", unit="stage", file=sys.stderr) as bar:
        args.progress = bar.update
        for name, width, height in args.res:
            H, W = padded(height), padded(width)
            bar.set_postfix_str(f"{name} {W}x{H}")
            res = {"name": name, "width": width, "height": height, "padded": [W, H], "backends": []}
            try:
                x = torch.rand(args.batch, 3, H, W, device=device)
            except torch.cuda.OutOfMemoryError:
                res["backends"] = [{"backend": b, **{s: "OOM" for s in args.stages}} for b in backends]
                bar.update(len(backends) * steps)
                results.append(res)
                continue
            for backend in backends:
                bar.set_postfix_str(f"{name} {W}x{H} {backend}")
                if backend in too_slow:
                    res["backends"].append({"backend": backend, **{s: f"skipped ({too_slow[backend]})" for s in args.stages}})
                    bar.update(steps)
                    continue
                need = estimated_peak_mib(backend, device, W, H, args.batch)
                have = available_mib(device)
                if need is not None and need > 0.9 * have and not args.ignore_memory_estimate:
                    why = f"needs about {need / 1024:.1f} GiB, {have / 1024:.1f} GiB available"
                    hint = "--backend cpu, " if backend == "torch" and device == "cpu" else ""
                    print(f"{name} {W}x{H} {backend}: skipped: a forward {why}; try {hint}--res kodak or a smaller "
                          f"WxH (--ignore-memory-estimate runs it anyway)", file=sys.stderr)
                    res["backends"].append({"backend": backend, **{s: f"skipped ({why})" for s in args.stages}})
                    bar.update(steps)
                    continue
                for precision in args.precision:
                    in_precision(model, precision, weights)
                    rec = run_one(model, x, backend, args, Clock(device))
                    res["backends"].append(rec)
                    for variant in args.variants:
                        res["backends"].append(run_one(model, x, backend, args, Clock(device), variant))
                    fwd = rec.get("forward")
                    if isinstance(fwd, dict) and fwd["p50_ms"] > args.max_seconds * 1e3:
                        too_slow[backend] = f"forward took {fwd['p50_ms'] / 1e3:.0f} s at {name}"
                if device == "cuda":
                    torch.cuda.empty_cache()
            del x
            results.append(res)
            if args.json:  # after every resolution, so a run cut short keeps what it measured
                Path(args.json).write_text(json.dumps({"machine": header, "results": results}, indent=1))

    print(table(results, header))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": header, "results": results}, indent=1))
    if args.plot:
        plot(results, args.plot, header)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
