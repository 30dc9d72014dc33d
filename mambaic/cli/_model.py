"""Model options shared by `mambaic compress` and `mambaic decompress`."""

from __future__ import annotations

import argparse
import os
import sys

import torch

from mambaic.checkpoint import load_checkpoint, random_model
from mambaic.precision import PRECISIONS


class UserError(Exception):
    """A mistake in the command line or its files: printed as `Error: ...`, no traceback."""


def add_model_arguments(
    parser: argparse.ArgumentParser, device_help: str, threads_help: str, precision_help: str
) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="CKPT", help="official or mambaic checkpoint (.pth.tar)")
    source.add_argument(
        "--random-init", action="store_true", help="random weights from --seed (demos and tests; no real compression)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --random-init (default 0)")
    small = parser.add_argument_group("model size for --random-init (defaults: the official model)")
    small.add_argument("--N", type=int, help="transform width / 2 (default 128)")
    small.add_argument("--M", type=int, help="latent channels (default 320)")
    small.add_argument("--depths", type=_depths, help="VSS blocks per stage, e.g. 2,2,9,2")
    small.add_argument("--num-slices", type=int, help="channel slices (default 5)")
    small.add_argument("--z-channels", type=int, help="hyper-latent channels (default 192)")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the model runs (default auto: " + device_help + ")",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="arithmetic of the analysis and synthesis transforms (default " + precision_help + "): fp32 as the "
        "official code; tf32 (TF32 tensor cores), bf16, fp16 faster on GPUs, at a small cost in quality",
    )
    parser.add_argument(
        "--threads",
        type=_positive,
        metavar="T",
        help="CPU threads (torch.set_num_threads; default: " + threads_help + ")",
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _depths(text: str) -> tuple[int, ...]:
    try:
        depths = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 4 comma-separated ints like 2,2,9,2, got {text!r}") from None
    if len(depths) != 4:
        raise argparse.ArgumentTypeError(f"must be 4 comma-separated ints like 2,2,9,2, got {text!r}")
    return depths


def size_options(args: argparse.Namespace) -> dict:
    """The model-size options given on the command line, as MambaIC keyword arguments."""
    names = {"N": "N", "M": "M", "depths": "depths", "num_slices": "num_slices", "z_channels": "z_channels"}
    return {key: getattr(args, attr) for attr, key in names.items() if getattr(args, attr) is not None}


def require_gpu(option: str, device: str) -> None:
    """``option`` (e.g. --cuda-graphs) works on a GPU only: refuse it on ``device`` otherwise."""
    if device != "cuda":
        raise UserError(f"{option} needs a GPU (--device cuda), got --device {device}")


def resolve_device(args: argparse.Namespace, recorded: str | None = None) -> str:
    """``--device``, or for auto: ``recorded`` (the encoder's device) if this machine has it, else
    cuda when there is a GPU, else cpu."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch.cuda.is_available() is False; use --device cpu")
    if args.device != "auto":
        return args.device
    if recorded in ("cpu", "cuda") and (recorded == "cpu" or torch.cuda.is_available()):
        return recorded
    return "cuda" if torch.cuda.is_available() else "cpu"


# A thread count taken from a file is used as it is (the arithmetic depends on it, not on the
# cores), up to this bound against forged headers.
MAX_THREADS = 1024


def resolve_threads(args: argparse.Namespace, recorded: int | None = None) -> int:
    """Set torch's CPU thread count from ``--threads``, else from ``recorded``; returns the count."""
    threads = args.threads or (recorded if isinstance(recorded, int) and 0 < recorded <= MAX_THREADS else None)
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def build_model(args: argparse.Namespace, device: str, defaults: dict | None = None, precision: str | None = None):
    """The model the options ask for, on ``device``, in ``--precision`` (else ``precision``, else
    fp32); ``defaults`` fill unset size options."""
    sizes = size_options(args)
    if args.checkpoint:
        if sizes:
            raise UserError(f"--{'/--'.join(sizes)} only apply to --random-init (a checkpoint fixes the model size)")
        try:
            model = load_checkpoint(args.checkpoint)
        except (ValueError, FileNotFoundError) as exc:
            raise UserError(str(exc)) from None
    else:
        try:
            model = random_model(args.seed, **{**(defaults or {}), **sizes})
        except ValueError as exc:
            raise UserError(str(exc)) from None
    return model.to(device).set_precision(args.precision or precision or "fp32")


def check_output(output, force: bool, inputs=()) -> None:
    """Refuse, before any work, an output that cannot or should not be written: a folder, one in a
    missing folder, an existing file without --force, or one of the inputs (never overwritten)."""
    out = os.path.abspath(os.fspath(output))
    if os.path.isdir(out):
        raise UserError(f"{output}: is a folder; give a file name")
    folder = os.path.dirname(out)
    if not os.path.isdir(folder):
        raise UserError(f"{output}: the folder {folder} does not exist")
    if any(os.path.exists(i) and os.path.samefile(out, i) for i in map(os.fspath, inputs) if os.path.exists(out)):
        raise UserError(f"{output}: is the input file; write elsewhere (the input is never overwritten)")
    if os.path.exists(out) and not force:
        raise UserError(f"{output}: exists; pass --force to replace it")


def run_command(run, args) -> int:
    """Run a command; a user's mistake becomes `Error: ...` on stderr and exit code 1, no traceback."""
    try:
        run(args)
    except UserError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0
