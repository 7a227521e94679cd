#!/usr/bin/env bash
# Long context on stdlib at 16x the training length: the 800-step B'MOJO of benchmarks/lm_compare.py (run it
# first, --out benchmarks/results/lm_compare_residual) read without and with a long-term store (a fresh store per
# 2,048-token window: the tokens that leave the eidetic memory, retrieved by later queries), on the same 16 test
# regions as the comparison.  Results: benchmarks/results/lm_store_16x/{no_store,store}/eval.json.
set -euo pipefail
cd "$(dirname "$0")/.."
CK=benchmarks/results/lm_compare_residual/runs/stdlib-bmojo/checkpoint
OUT=benchmarks/results/lm_store_16x
STORE=$(mktemp -d)/store
"${PYTHON:-python}" -m bmojo --threads 1 eval ppl --checkpoint "$CK" --factors 16 --regions 16 --out "$OUT/no_store"
"${PYTHON:-python}" -m bmojo --threads 1 eval ppl --checkpoint "$CK" --factors 16 --regions 16 --out "$OUT/store" \
    --storage "$STORE"
