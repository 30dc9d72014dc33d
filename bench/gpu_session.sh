#!/usr/bin/env bash
# One GPU session: the parity suite at full shapes, the per-kernel benchmarks and the full-model
# latency, with every log and result written under $OUT (default bench/results/gpu).
# Usage: bench/gpu_session.sh [parity] [kernels] [latency]   (default: all three)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
steps=${*:-parity kernels latency}
export PYTHONUNBUFFERED=1 MAMBAIC_BENCH_OUT="$OUT"  # set MAMBAIC_COMMIT where the copy has no current .git
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -m mambaic info | tee -a "$OUT/gpu.txt"
for step in $steps; do
  case $step in
    parity) timeout 400 python3 -m pytest tests/parity -q -p no:cacheprovider 2>&1 | tail -40 | tee "$OUT/parity.txt" ;;
    kernels) timeout 400 python3 -m pytest bench/kernels --benchmark-only -q -p no:cacheprovider \
               --benchmark-json="$OUT/kernels-benchmark.json" 2>&1 | tail -40 | tee "$OUT/kernels.txt" ;;
    latency) timeout 500 python3 bench/latency.py --res ${LATENCY_RES:-kodak 1080p 2K 4K} \
               --json "$OUT/latency.json" --plot "$OUT/latency.png" 2>&1 | tail -40 | tee "$OUT/latency.txt" ;;
    *) echo "unknown step $step (parity|kernels|latency)"; exit 2 ;;
  esac
done
