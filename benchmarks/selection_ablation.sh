#!/usr/bin/env bash
# The selection ablation of the recall issue: every row of benchmarks/results/selection_ablation/rows.jsonl, each
# one run of benchmarks/recall_ablation.py (MQAR, V=256, T=64, 8 pairs, queries from 32, W=C=8, M=16, ~150k
# params, 800 steps, lr 3e-3, one torch thread; `bmojo-paper` is the preset `bmojo` as it was when these rows
# were measured).  Runs go two at a time (a 2-core CPU); ~3-5 min per run.
# Print the table with: python benchmarks/selection_table.py
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/results/selection_ablation
run() { "${PYTHON:-python}" benchmarks/recall_ablation.py "$@" --out "$OUT"; }
G='"selection_gate": true, "gate_read": "logit", "selector": "none"'
RECIPE="$G"', "train_memory_size": 64, "fading_gate": -4.0, "expand": 1, "d_state": 8, "gate_penalty": 0.1, "train_memory_anneal": 0.5'

# baselines and their spread (seed 0 at 3e-3: 0.813, the main job's row in the README)
run transformer_s1 transformer 800 3e-3 --seed 1 &
run transformer_lr6_s0 transformer 800 6e-3 --seed 0 --lengths 4,16; wait
# the gate read as a logit, every token in the training pool; fading on / off
run gl_none_T64 bmojo-paper 800 3e-3 "{$G, \"train_memory_size\": 64}" &
run gl_none_T64_nofade bmojo-paper 800 3e-3 "{$G, \"train_memory_size\": 64, \"fading\": false}"; wait
run gl_none_T64_nofade_s1 bmojo-paper 800 3e-3 "{$G, \"train_memory_size\": 64, \"fading\": false}" --seed 1 --lengths 4,16 &
run gl_none_T64_nofade_s2 bmojo-paper 800 3e-3 "{$G, \"train_memory_size\": 64, \"fading\": false}" --seed 2; wait
# a pool of 2M instead of all tokens
run gl_none_T32_nofade_s1 bmojo-paper 800 3e-3 "{$G, \"train_memory_size\": 32, \"fading\": false}" --seed 1 --lengths 4,16 &
# the budget: a cheaper SSM, the fading segment starting switched off
run gl_none_T64_e1s8 bmojo-paper 800 3e-3 "{$G, \"train_memory_size\": 64, \"expand\": 1, \"d_state\": 8}"; wait
run gl_none_T64_fg4 bmojo-paper 800 3e-3 "{$G, \"train_memory_size\": 64, \"fading_gate\": -4.0}" &
run gl_none_T64_fg4_e1s8 bmojo-paper 800 3e-3 "{$G, \"train_memory_size\": 64, \"fading_gate\": -4.0, \"expand\": 1, \"d_state\": 8}"; wait
run gl_none_T64_fg4_e1s8_s1 bmojo-paper 800 3e-3 "{$G, \"train_memory_size\": 64, \"fading_gate\": -4.0, \"expand\": 1, \"d_state\": 8}" --seed 1 &
# a sparsity penalty on the gate, and the pool shrinking to M over the first half of training
run gl_none_T64_nofade_p01_s1 bmojo-paper 800 3e-3 "{$G, \"train_memory_size\": 64, \"fading\": false, \"gate_penalty\": 0.1}" --seed 1; wait
run gl_none_T64_nofade_p01_an5_s1 bmojo-paper 800 3e-3 "{$G, \"train_memory_size\": 64, \"fading\": false, \"gate_penalty\": 0.1, \"train_memory_anneal\": 0.5}" --seed 1 &
# the recipe the main job used until 2026-12-07 (the preset bmojo-recall then), two seeds, at 1x, 4x and 16x
run recipe_s0 bmojo-paper 800 3e-3 "{$RECIPE}" --seed 0 --lengths 4,16; wait
run recipe_s1 bmojo-paper 800 3e-3 "{$RECIPE}" --seed 1 --lengths 4,16 &
run recipe_rope05_s0 bmojo-paper 800 3e-3 "{$RECIPE, \"rope_fraction\": 0.5}" --seed 0 --lengths 4,16; wait
# ... at the main job's learning rate, and with the eidetic keys read at the window's edge (memory_rope=edge)
run recipe_lr6_s0 bmojo-paper 800 6e-3 "{$RECIPE}" --seed 0 --lengths 4,16 &
run recipe_lr6_s1 bmojo-paper 800 6e-3 "{$RECIPE}" --seed 1 --lengths 4,16; wait
run recipe_edge_lr6_s0 bmojo-paper 800 6e-3 "{$RECIPE, \"memory_rope\": \"edge\"}" --seed 0 --lengths 4,16 &
run recipe_edge_lr6_s1 bmojo-paper 800 6e-3 "{$RECIPE, \"memory_rope\": \"edge\"}" --seed 1 --lengths 4,16; wait
# the innovation test alone (no gate) against random selection at equal M, on a predictable (markov) filler; on the
# random filler: bmojo_inn / bmojo_random in benchmarks/results/recall_ablation (1500 steps)
run inn_markov bmojo-paper 800 3e-3 '{}' --filler markov &
run random_markov bmojo-paper 800 3e-3 '{"selector": "random"}' --filler markov; wait
# learned selection with M = 2x the 16 pair tokens, up to 2000 steps (stops at 0.995)
run recipe_M32_2000 bmojo-paper 2000 6e-3 "{$RECIPE, \"memory_size\": 32}"
# the recipe on the default preset of the language-modelling issue (bmojo: the SSM output added to the residual);
# the rows above ran the paper's layer (bmojo-paper, the preset `bmojo` was before that issue)
run recipe_lr6_res_s0 bmojo 800 6e-3 "{$RECIPE}" --seed 0 --lengths 4,16 &
run recipe_lr6_res_s1 bmojo 800 6e-3 "{$RECIPE}" --seed 1 --lengths 4,16; wait
# the associative innovation (selector=assoc: the delta rule's error predicting a token from the one before it, in
# context) against the learned innovation test and random selection, no gate, equal M, with the share of the memory
# that holds pair tokens (memory_pair_share); inn_markov_pk / random_markov_pk rerun inn_markov / random_markov
run assoc_markov bmojo-paper 800 3e-3 '{"selector": "assoc"}' --filler markov --lengths 4,16 &
run inn_markov_pk bmojo-paper 800 3e-3 '{}' --filler markov --lengths 4,16; wait
run random_markov_pk bmojo-paper 800 3e-3 '{"selector": "random"}' --filler markov --lengths 4,16 &
# the recipe with a learned null key beside the memory (null_key)
run recipe_lr6_null_s0 bmojo-paper 800 6e-3 "{$RECIPE, \"null_key\": true}" --seed 0 --lengths 4,16; wait
run recipe_lr6_null_s1 bmojo-paper 800 6e-3 "{$RECIPE, \"null_key\": true}" --seed 1 --lengths 4,16; wait
# the recipe on the predictable filler, with the gate alone and with the associative innovation under it
run recipe_lr6_markov_s0 bmojo-paper 800 6e-3 "{$RECIPE}" --filler markov --seed 0 --lengths 4,16 &
run recipe_lr6_assoc_markov_s0 bmojo-paper 800 6e-3 "{$RECIPE, \"selector\": \"assoc\"}" --filler markov --seed 0 --lengths 4,16; wait
