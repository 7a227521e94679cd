#!/usr/bin/env bash
# The learning-rate sweep of the 4,000-step comparison (benchmarks/compare_plateau.sh ran every model at 6e-3):
# Mamba and B'MOJO at a lower and a higher rate on the main job's task, seed 0, one process (one core), so that the
# other core stays free.  Every run is a row of OUT/rows.jsonl, the ones that do not learn included; results.json
# keeps each model's best rate.  About 60 minutes on one core.
#   bash benchmarks/compare_lr_sweep.sh [OUT] [LRS] [PRESETS] [SEED]
#   (defaults: benchmarks/results/compare_plateau/lr_sweep_seed0, "2e-3,1.2e-2", "mamba,bmojo", 0)
set -euo pipefail
OUT=${1:-benchmarks/results/compare_plateau/lr_sweep_seed0}
LRS=${2:-2e-3,1.2e-2}
PRESETS=${3:-mamba,bmojo}
SEED=${4:-0}
BMOJO=${BMOJO:-.venv/bin/bmojo}
"$BMOJO" --threads 1 compare --steps 4000 --seed "$SEED" --presets "$PRESETS" --sweep "$LRS" --workers 1 \
  --out "$OUT" 2>&1 | tee "$OUT.log"
