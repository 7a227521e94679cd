#!/usr/bin/env bash
# The learning-rate sweep of the 4,000-step comparison (benchmarks/compare_plateau.sh ran every model at 6e-3):
# Mamba and B'MOJO at a lower and a higher rate on the main job's task, seed 0, one process (one core), so that the
# other core stays free (WORKERS=2 runs two at a time).  Every run is in results.json under `all_runs`, the ones that
# do not learn included; `best` keeps each model's best rate.  About 60 minutes on one core for the defaults.
#   bash benchmarks/compare_lr_sweep.sh [OUT] [LRS] [PRESETS] [SEED]
#   (defaults: benchmarks/results/compare_plateau/lr_sweep_seed0, "2e-3,1.2e-2", "mamba,bmojo", 0)
# The other presets (2026-12-08, the current bmojo recipe, two at a time, ~80 minutes):
#   WORKERS=2 bash benchmarks/compare_lr_sweep.sh benchmarks/results/compare_plateau/lr_sweep_seed0_rest \
#     2e-3,1.2e-2 transformer,swa,hybrid,bmojo-f,bmojo
set -euo pipefail
OUT=${1:-benchmarks/results/compare_plateau/lr_sweep_seed0}
LRS=${2:-2e-3,1.2e-2}
PRESETS=${3:-mamba,bmojo}
SEED=${4:-0}
BMOJO=${BMOJO:-.venv/bin/bmojo}
"$BMOJO" --threads 1 compare --steps 4000 --seed "$SEED" --presets "$PRESETS" --sweep "$LRS" --workers "${WORKERS:-1}" \
  --out "$OUT" 2>&1 | tee "$OUT.log"
