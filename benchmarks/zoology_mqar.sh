#!/usr/bin/env bash
# MQAR in the Zoology protocol (Arora et al. 2023, "Zoology: measuring and improving recall in efficient language
# models"): V=8192, 2 layers, d_model=128, keys and values from disjoint halves of the vocabulary, power-law query
# gaps, every model at its best of 4 learning rates.  Zoology trains on a mix of lengths up to T=256 (64/4, 128/8,
# 256/16, 256/32, 256/64 pairs) and tests up to T=1024; `bmojo compare` trains on one (T, pairs) at a time, so this
# trains at T=256 with 64 pairs (full) or 16 (reduced), with ~1.3M parameters (d_model 112-128 by preset), and
# tests at 4x the length (queries right after the pairs, as in Zoology; at 4x they start 4x later).
#
#   benchmarks/zoology_mqar.sh full      # a GPU: 64 pairs at T=256, 4 LRs, 20k steps, test at 1024
#   benchmarks/zoology_mqar.sh reduced   # the CPU: 16 pairs at T=256, 2 LRs, 600 steps, test at 1024
#
# PYTHON (default: python) runs it, e.g. PYTHON=.venv/bin/python.
# Results: benchmarks/results/zoology_mqar_<mode>/ (results.json, results.png: accuracy against state bytes).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-reduced}
common=(--task mqar --vocab-size 8192 --seq-len 256 --length-factors 4
        --model-opt n_layers=2 --model-opt window=64 --model-opt chunk=64 --model-opt memory_size=64
        --model-opt n_heads=2 --model-opt max_seq_len=1024 --out "benchmarks/results/zoology_mqar_$mode")
case "$mode" in
  full)    exec "${PYTHON:-python}" -m bmojo compare "${common[@]}" --num-kv-pairs 64 --query-start 128 --params 1300000 --steps 20000 --batch-size 64 \
             --sweep 1e-4,3e-4,1e-3,3e-3 --eval-examples 1024 --workers 1 ;;
  reduced) exec "${PYTHON:-python}" -m bmojo compare "${common[@]}" --num-kv-pairs 16 --query-start 32 --params 1300000 --steps 600 --batch-size 16 \
             --sweep 1e-3,3e-3 --eval-examples 256 --presets transformer,mamba,bmojo ;;
  *) echo "usage: $0 full|reduced" >&2; exit 2 ;;
esac
