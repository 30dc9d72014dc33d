#!/usr/bin/env bash
# The new user's scenario of issue 10, through the command line: three photographs compressed on
# the GPU with MAMBAIC_BACKEND=triton, then decompressed (1) following the file, (2) with
# MAMBAIC_BACKEND=torch, (3) on the CPU. Each decode must give the image or a clear refusal.
#   bash bench/compat_cli.sh OUTDIR
set -u
out=${1:-/tmp/compat_cli}
mkdir -p "$out"
python3 - "$out" <<'PY'
import sys
from PIL import Image
from skimage import data
for name in ("astronaut", "coffee", "chelsea"):
    Image.fromarray(getattr(data, name)()).save(f"{sys.argv[1]}/{name}.png")
PY
for name in astronaut coffee chelsea; do
  echo "== $name"
  MAMBAIC_BACKEND=triton python3 -m mambaic compress "$out/$name.png" "$out/$name.mic" --random-init --seed 0 --device cuda
  python3 -m mambaic decompress "$out/$name.mic" "$out/${name}_follow.png" --random-init --seed 0; echo "exit $?"
  MAMBAIC_BACKEND=torch python3 -m mambaic decompress "$out/$name.mic" "$out/${name}_torch.png" --random-init --seed 0; echo "exit $?"
  python3 -m mambaic decompress "$out/$name.mic" "$out/${name}_cpu.png" --random-init --seed 0 --device cpu; echo "exit $?"
  ls "$out" | grep "^${name}_" | tr '\n' ' '; echo
done
python3 -m mambaic info "$out/astronaut.mic"
