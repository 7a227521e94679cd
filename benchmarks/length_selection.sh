#!/usr/bin/env bash
# Recall beyond the training length: what B'MOJO's selection needs (the recall issue).  Every row of
# benchmarks/results/recall_length/selection/rows.jsonl, failures included: one run of benchmarks/recall_ablation.py
# each (MQAR V=256, T=64, 8 pairs, queries from 32, W=C=8, ~150k params, lr 6e-3, 1500 steps, evaluated at 1x, 4x
# and 16x with the diagnostics: every token kept, a perfect selector (the oldest 2P tokens kept), the share of the
# pair tokens each layer's memory holds, and where the gate ranks the pairs among the filler).  Two runs at a time on
# a 2-core CPU, ~7 min each.  Print the table with:
#   python benchmarks/selection_table.py benchmarks/results/recall_length/selection/rows.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/recall_length/selection}
run() { "${PYTHON:-.venv/bin/python}" benchmarks/recall_ablation.py "$@" --out "$OUT"; }
G='"selection_gate": true, "gate_read": "logit", "selector": "none"'
BASE="$G"', "train_memory_size": 64, "fading_gate": -4.0, "expand": 1, "d_state": 8, "train_memory_anneal": 0.5, "memory_rope": "edge"'
PEN="$BASE"', "gate_penalty": 0.1'   # the main job's recipe before this study, with edge reads
NOPEN="$BASE"', "gate_penalty": 0.0'

# 1. the recipe read at the edge with M=32 (2x the pair tokens; 66,176 state bytes, the Transformer's is 75,456)
run edge_M32_s0 bmojo-paper 1500 6e-3 "{$PEN, \"memory_size\": 32}" --seed 0 --lengths 4,16 &
run edge_M32_s1 bmojo-paper 1500 6e-3 "{$PEN, \"memory_size\": 32}" --seed 1 --lengths 4,16; wait
# 2. eidetic memory only in the second layer, whose gate sees context (first layer B'MOJO-F or SWA)
run edge_M32_FB_s0 bmojo-paper 1500 6e-3 "{$PEN, \"memory_size\": 32, \"pattern\": \"FB\"}" --seed 0 --lengths 4,16 &
run edge_M32_SB_s0 bmojo-paper 1500 6e-3 "{$PEN, \"memory_size\": 32, \"pattern\": \"SB\"}" --seed 0 --lengths 4,16; wait
run edge_M32_FB_pen0_s0 bmojo-paper 1500 6e-3 "{$NOPEN, \"memory_size\": 32, \"pattern\": \"FB\"}" --seed 0 --lengths 4,16 &
run edge_M32_SB_pen0_s0 bmojo-paper 1500 6e-3 "{$NOPEN, \"memory_size\": 32, \"pattern\": \"SB\"}" --seed 0 --lengths 4,16; wait
# 3. the gate reads the attention input (gate_input=conv: the token and the attn_conv_size - 1 before it)
run edge_M32_gconv_s0 bmojo-paper 1500 6e-3 "{$PEN, \"memory_size\": 32, \"gate_input\": \"conv\"}" --seed 0 --lengths 4,16 &
run edge_M32_gconv_k8_s0 bmojo-paper 1500 6e-3 "{$PEN, \"memory_size\": 32, \"gate_input\": \"conv\", \"attn_conv_size\": 8}" --seed 0 --lengths 4,16; wait
run edge_M32_gconv_pen0_s0 bmojo-paper 1500 6e-3 "{$NOPEN, \"memory_size\": 32, \"gate_input\": \"conv\"}" --seed 0 --lengths 4,16 &
run edge_M32_gconv_k8_pen0_s0 bmojo-paper 1500 6e-3 "{$NOPEN, \"memory_size\": 32, \"gate_input\": \"conv\", \"attn_conv_size\": 8}" --seed 0 --lengths 4,16; wait
# 4. trained on a harder cut (M=16) than the one it is evaluated with (M=32)
run edge_M16_gconv_pen0_s0 bmojo-paper 1500 6e-3 "{$NOPEN, \"memory_size\": 16, \"gate_input\": \"conv\"}" --seed 0 --lengths 4,16 --eval-memory-sizes 32 &
run edge_M16_gconv_k8_pen0_s0 bmojo-paper 1500 6e-3 "{$NOPEN, \"memory_size\": 16, \"gate_input\": \"conv\", \"attn_conv_size\": 8}" --seed 0 --lengths 4,16 --eval-memory-sizes 32; wait
