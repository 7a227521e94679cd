#!/usr/bin/env bash
# The main job's six presets at an equal budget long enough for the bounded baselines to learn (4,000 steps, one
# cosine schedule, early stop at 0.995), one `bmojo compare` per seed so each seed's results land as it ends; then
# the table over seeds (median and min, each model's gain over the last quarter of its curve) and every curve in
# one plot.  About 40 minutes per seed on 2 cores.
#   bash benchmarks/compare_plateau.sh [OUT] [SEEDS]      (defaults: benchmarks/results/compare_plateau/steps4000, "0 1 2")
set -euo pipefail
OUT=${1:-benchmarks/results/compare_plateau/steps4000}
SEEDS=${2:-"0 1 2"}
BMOJO=${BMOJO:-.venv/bin/bmojo}
PY=${PY:-.venv/bin/python}
for s in $SEEDS; do
  [ -f "$OUT/seed$s/results.json" ] && continue   # a seed already done is kept
  "$BMOJO" compare --steps 4000 --seed "$s" --workers 2 --out "$OUT/seed$s" --overwrite 2>&1 | tee "$OUT/seed$s.log"
done
"$PY" benchmarks/plateau_table.py "$OUT"/seed*/results.json --out "$OUT"
