"""`mambaic <command> ...`: each command is a module of mambaic.cli with a main(argv)."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "info": "versions, GPU and kernel backends; or what a .mic file records (mambaic info FILE.mic)",
    "compress": "encode an image into a .mic file",
    "decompress": "decode a .mic file into a PNG",
    "eval": "compress and decompress every image of a folder: bpp, PSNR, MS-SSIM, times",
    "train": "train the model on a folder of images (the official recipe), checkpoints in the official format",
    "plot": "rate-distortion curves of result files (mambaic eval --json, CompressAI's layout)",
    "bdrate": "Bjontegaard delta rate and delta PSNR between two curves",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: mambaic <command> [options]\n\ncommands:")
        for name, text in COMMANDS.items():
            print(f"  {name:<12} {text}")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"Error: unknown command {command!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return importlib.import_module(f"mambaic.cli.{command}").main(rest)
