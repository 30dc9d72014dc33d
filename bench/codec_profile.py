"""Where compress and decompress spend their time: the network, the entropy coder, the host.

    python bench/codec_profile.py --res kodak 2K --json out.json

For each size, on a crop of a real photograph (scikit-image's astronaut, resized; noise when
scikit-image is missing), with the official configuration (random weights, or --checkpoint):

- totals: ``encode_image`` / ``decode_image`` (the .mic codec: checksums, the file; eager, and
  on a GPU with the network parts replayed from CUDA graphs), the weights fingerprint, and
  ``model.compress`` / ``model.decompress`` alone, each with cuDNN's deterministic
  algorithms (what the codec uses) and with its default ones; median of --iters after a warm-up;
- stages: the same ``encode_image`` / ``decode_image`` with every step of the slice loop, the
  transforms, the entropy coder calls and the codec's own work timed synchronously (a device
  sync before and after each, so each figure holds its GPU work; the sum is the total plus the
  syncs' cost);
- kernels: one profiled compress and decompress: GPU kernel time, kernel launches, the largest
  kernels and the host functions with the most self time.

The stage timers sync the device, which hides the overlap of host and GPU: the totals are the
figures to compare; the stages say where the time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` importable from a checkout

from bench.latency import RESOLUTIONS, parse_resolution  # noqa: E402
from bench.timing import git_commit  # noqa: E402

# The methods whose time the stage breakdown reports: (owner, attribute) -> stage name.
MODEL_STAGES = {
    "_analysis": "g_a", "h_a": "h_a", "_code_z": "z coding", "_decode_z": "z decoding",
    "_hyper_synthesis": "h_s", "_slice_support": "slice support (SWAtten, cc transforms)",
    "_anchor_parameters": "anchor parameters (context VSS)",
    "_non_anchor_parameters": "non-anchor parameters (masked conv, context VSS)",
    "_code_colour": "entropy coding (y)", "_decode_colour": "entropy decoding (y)", "_lrp": "lrp",
    "_synthesis": "g_s",
}  # fmt: skip
CODEC_STAGES = {
    "weights_fingerprint": "weights fingerprint", "tables_fingerprint": "tables fingerprint",
    "latent_checksum": "latent checksums", "read_mic": "parse .mic", "check_model": "check model",
}  # fmt: skip


def photo(width: int, height: int) -> torch.Tensor:
    """(1, 3, height, width) in [0, 1]: astronaut resized (a real photograph's statistics)."""
    try:
        import numpy as np
        from PIL import Image
        from skimage import data
    except ImportError:
        return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    img = Image.fromarray(data.astronaut()).resize((width, height), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float() / 255


class StageTimer:
    """Patches methods so that each call is timed between two device syncs, per stage name."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"
        self.ms: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._depth = 0
        self._undo = []

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def wrap(self, owner, attr: str, stage: str):
        if isinstance(getattr(owner, attr), torch.nn.Module):  # a submodule: time its forward
            owner, attr = getattr(owner, attr), "forward"
        original = getattr(owner, attr)
        own = attr in vars(owner)  # an instance's method patch is undone by deleting it

        @functools.wraps(original)
        def timed(*args, **kwargs):
            if self._depth:  # a stage inside another is counted in the outer one only
                return original(*args, **kwargs)
            self._sync()
            self._depth += 1
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self._sync()
                self.ms[stage] += (time.perf_counter() - t) * 1e3
                self.calls[stage] += 1
                self._depth -= 1

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, original if own else None))

    def restore(self):
        for owner, attr, original in reversed(self._undo):
            if original is None:
                delattr(owner, attr)
            else:
                setattr(owner, attr, original)
        self._undo.clear()


def timed_ms(fn, device: str, iters: int) -> list[float]:
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    times = []
    for _ in range(iters):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    return times


@contextlib.contextmanager
def cudnn_deterministic(on: bool):
    saved = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = on
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic = saved


def stage_breakdown(model, x, device: str, data: bytes) -> dict:
    """ms per stage of one encode_image of x and one decode_image of ``data`` (see StageTimer)."""
    import mambaic.codec.image_codec as ic
    import mambaic.codec.verify as verify

    calls = {"encode": lambda: ic.encode_image(model, x), "decode": lambda: ic.decode_image(model, data)}
    result = {}
    for name, call in calls.items():
        timer = StageTimer(device)
        for attr, stage in MODEL_STAGES.items():
            timer.wrap(model, attr, stage)
        for module in (ic, verify):
            for attr, stage in CODEC_STAGES.items():
                if hasattr(module, attr):
                    timer.wrap(module, attr, stage)
        try:
            total = timed_ms(call, device, 1)[0]
        finally:
            timer.restore()
        stages = {k: round(v, 2) for k, v in sorted(timer.ms.items(), key=lambda kv: -kv[1])}
        result[name] = {"total_ms": round(total, 2), "stages_ms": stages, "calls": dict(timer.calls)}
    return result


def kernel_profile(fn, top: int = 12) -> dict:
    """GPU kernel time, launches, the largest kernels and host self time of one call of fn."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    by_name: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for e in kernels:
        by_name[e.name][0] += e.device_time / 1e3
        by_name[e.name][1] += 1
    largest = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]
    host = sorted(prof.key_averages(), key=lambda a: -a.self_cpu_time_total)[:top]
    return {
        "gpu_kernel_ms": round(sum(v[0] for v in by_name.values()), 2),
        "launches": len(kernels),
        "largest_kernels": [{"name": n[:90], "ms": round(ms, 3), "calls": c} for n, (ms, c) in largest],
        "host_self": [{"name": a.key[:90], "self_ms": round(a.self_cpu_time_total / 1e3, 2), "calls": a.count}
                      for a in host],  # fmt: skip
    }


def profile_size(model, width: int, height: int, device: str, iters: int, kernels: bool) -> dict:
    from mambaic.codec import decode_image, encode_image, weights_fingerprint

    x = photo(width, height).to(device)
    fingerprint = weights_fingerprint(model)
    record = {"size": f"{width}x{height}"}
    encoded = encode_image(model, x, fingerprint)  # warm-up: compilation, autotuning, cuDNN's choices
    decode_image(model, encoded.data, fingerprint=fingerprint)
    record["file_bytes"] = len(encoded.data)
    record["bpp"] = 8 * len(encoded.data) / (width * height)

    totals = {}
    totals["encode_image"] = timed_ms(lambda: encode_image(model, x, fingerprint), device, iters)
    totals["decode_image"] = timed_ms(lambda: decode_image(model, encoded.data, fingerprint=fingerprint), device, iters)
    totals["weights_fingerprint"] = timed_ms(lambda: weights_fingerprint(model), device, 2)
    if device == "cuda":  # the network parts replayed from CUDA graphs (captured by the warm-up call)
        model.use_cuda_graphs()
        data = encode_image(model, x, fingerprint).data
        assert data == encoded.data, "graphed encode_image wrote another file than eager"
        decode_image(model, data, fingerprint=fingerprint)
        totals["encode_image (cuda graphs)"] = timed_ms(lambda: encode_image(model, x, fingerprint), device, iters)
        totals["decode_image (cuda graphs)"] = timed_ms(
            lambda: decode_image(model, encoded.data, fingerprint=fingerprint), device, iters)  # fmt: skip
        model.use_cuda_graphs(False)
    model.eval()
    with torch.no_grad():
        from mambaic.image import pad_to_multiple

        padded, _ = pad_to_multiple(x)
        for on in (True, False):
            with cudnn_deterministic(on):
                out = model.compress(padded)  # warm-up of this cuDNN mode
                model.decompress(out["strings"], out["shape"])
                tag = "deterministic" if on else "default"
                totals[f"model.compress ({tag} cudnn)"] = timed_ms(lambda: model.compress(padded), device, iters)
                totals[f"model.decompress ({tag} cudnn)"] = timed_ms(
                    lambda: model.decompress(out["strings"], out["shape"]), device, iters)  # fmt: skip
    record["totals_ms"] = {k: {"p50": round(statistics.median(v), 2), "min": round(min(v), 2), "runs": len(v)}
                           for k, v in totals.items()}  # fmt: skip
    record["stages"] = stage_breakdown(model, x, device, encoded.data)
    if kernels and device == "cuda":
        record["kernels"] = {
            "encode_image": kernel_profile(lambda: encode_image(model, x, fingerprint)),
            "decode_image": kernel_profile(lambda: decode_image(model, encoded.data, fingerprint=fingerprint)),
        }
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--res", nargs="+", type=parse_resolution, default=[parse_resolution("kodak")],
                        help=f"sizes: {', '.join(RESOLUTIONS)} or WxH (default kodak)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--checkpoint", help="a .pth.tar to load (default: random weights, seed 0)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--no-kernels", action="store_true", help="skip the torch.profiler pass")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    from mambaic.checkpoint import load_checkpoint, random_model

    torch.manual_seed(0)
    model = load_checkpoint(args.checkpoint) if args.checkpoint else random_model(0)
    model = model.to(args.device).eval()
    model.update()
    results = {"commit": git_commit(), "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
               "torch": torch.__version__, "sizes": []}  # fmt: skip
    for _, width, height in args.res:
        rec = profile_size(model, width, height, args.device, args.iters, not args.no_kernels)
        results["sizes"].append(rec)
        print(json.dumps(rec, indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
