#!/usr/bin/env bash
# DistributedDataParallel scaling of `mambaic train`: the same short run on 1, then G GPUs (batch 8
# per GPU of 256x256 crops of scikit-image's photographs), each run's steps.csv and log.csv in $OUT.
# Usage: OUT=dir bash bench/ddp_scaling.sh [G ...]   (default: 1 2); then read the step times with
#        python bench/ddp_scaling.py $OUT
# Needs the photographs as PNG files in .data/photos (python bench/learning_run.py photos .data/photos).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/ddp}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0  # NVLink multicast off, as the multi-GPU machines require
python3 -c "
import sys; sys.path.insert(0, 'bench'); from pathlib import Path; import learning_run as L
print(L.make_folders(Path('.data/photos'), Path('/tmp/learn'), 0)['tiles'], 'tiles')"
mkdir -p /tmp/vsmall && python3 -c "
from PIL import Image; Image.open('.data/photos/coffee.png').crop((0, 0, 256, 256)).save('/tmp/vsmall/v.png')"
python3 -c "import mambaic_kernels.cuda" 2>&1 | tail -1  # build the extension once, before the ranks want it
COMMON="/tmp/learn/train --val /tmp/vsmall --lambda 0.013 --epochs 3 --max-steps 11 --workers 4"
for G in ${*:-1 2}; do
  if [ "$G" = 1 ]; then python3 -m mambaic train $COMMON --out /tmp/g$G 2>/dev/null
  else python3 -m torch.distributed.run --standalone --nproc_per_node=$G -m mambaic train $COMMON --out /tmp/g$G 2>/dev/null; fi
  cp /tmp/g$G/steps.csv "$OUT/ddp_steps_g$G.csv"; cp /tmp/g$G/log.csv "$OUT/ddp_log_g$G.csv"
done
