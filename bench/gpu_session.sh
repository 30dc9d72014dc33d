#!/usr/bin/env bash
# One GPU session: the parity suite at full shapes, the model and codec tests, the per-kernel benchmarks and the full-model
# latency, the training step, with every log and result written under $OUT (default bench/results/gpu).
# Usage: bench/gpu_session.sh [parity] [model] [kernels] [latency] [train]   (default: all five; the
# device tool's 10-minute calls take one or two steps each)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
steps=${*:-parity model kernels latency train}
export PYTHONUNBUFFERED=1 MAMBAIC_BENCH_OUT="$OUT"  # set MAMBAIC_COMMIT where the copy has no current .git
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -m mambaic info | tee -a "$OUT/gpu.txt"
# pytest-xdist where installed: WORKERS processes share the GPU
parallel=$(python3 -c "import xdist" 2>/dev/null && echo "-n ${WORKERS:-12}")
for step in $steps; do
  case $step in
    # Test runs are cut by SIGINT, not killed: pytest then still prints its summary, so a run
    # that hits the limit names its failures. -v prints each result as it lands.
    parity) timeout -s INT ${PARITY_LIMIT:-400} python3 -m pytest tests/parity -v $parallel --tb=short \
              -p no:cacheprovider -p no:benchmark 2>&1 | tee "$OUT/parity.txt" | grep -E "FAILED|passed|failed" ;;
    model) timeout -s INT ${MODEL_LIMIT:-400} python3 -m pytest tests/model tests/codec -v $parallel \
              --tb=short -p no:cacheprovider -p no:benchmark 2>&1 | tee "$OUT/model.txt" | grep -E "FAILED|passed|failed" ;;
    kernels) timeout 400 python3 -m pytest bench/kernels --benchmark-only -q -p no:cacheprovider \
               --benchmark-json="$OUT/kernels-benchmark.json" 2>&1 | tail -40 | tee "$OUT/kernels.txt" ;;
    latency) timeout 500 python3 bench/latency.py --res ${LATENCY_RES:-kodak 1080p 2K 4K} \
               --json "$OUT/latency.json" --plot "$OUT/latency.png" 2>&1 | tail -40 | tee "$OUT/latency.txt" ;;
    # the official step per backend (vmamba where importable), then where its GPU time goes
    train) timeout 300 python3 bench/train_step.py --json "$OUT/train_step.json" 2>&1 | tail -8 | tee "$OUT/train_step.txt"
           timeout 150 python3 bench/train_profile.py --rows 30 2>&1 | tee "$OUT/train_profile.txt" | head -3 ;;
    *) echo "unknown step $step (parity|model|kernels|latency|train)"; exit 2 ;;
  esac
done
