"""Write the training recipes in this folder: five models at the paper's four sizes, 2,048-token context.

Every choice is here, once; `docs/recipes.md` explains them.  For each model and size the depth is fixed and the
width is the multiple of 64 whose parameter count (on the meta device, GPT-NeoX vocabulary) is nearest the
size's name, so the five models of one size match in parameters.  Run it again after a change to a preset:

    python configs/make_recipes.py          # rewrites configs/*.json and prints each model's count
"""
from __future__ import annotations

import json
from pathlib import Path

from bmojo.models import count_params, preset

VOCAB = 50_277  # the GPT-NeoX tokenizer the Mamba and B'MOJO papers train with
CONTEXT = 2048
SIZES = {"130m": 130_000_000, "370m": 370_000_000, "790m": 790_000_000, "1.4b": 1_400_000_000}
# blocks per size: a Transformer-style block (mixer + MLP) as in GPT-3's table; Mamba has no MLP, so twice the
# blocks (the Mamba paper's 24 / 48 / 48 / 48)
DEPTH = {"130m": 12, "370m": 24, "790m": 24, "1.4b": 24}
MODELS = {
    "transformer": {},
    "mamba": {"depth": 2},
    "hybrid": {"pattern": "MA"},  # a Mamba layer, then full attention, tiled (Jamba-style)
    "bmojo-f": {"window": 512},
    "bmojo": {"window": 512, "chunk": 128, "memory_size": 256},
}
# AdamW as in GPT-3 / the Mamba paper: peak lr by size, 10% floor, 2,000-step warmup, 0.5M tokens per step
LR = {"130m": 6e-4, "370m": 3e-4, "790m": 2.5e-4, "1.4b": 2e-4}
TOKENS = {"130m": 2.6e9, "370m": 7.4e9, "790m": 15.8e9, "1.4b": 28e9}  # 20 tokens per parameter (Chinchilla)
BATCH = 256  # sequences of 2,048 tokens per step: 524,288 tokens
# on 8 GPUs: 8 micro-batches of 4 sequences per GPU, each block recomputed in the backward (`--dry-run` shows the
# memory; change grad_accum with the GPU count so that batch_size / GPUs / grad_accum rows fit)
GRAD_ACCUM = 8


def model_fields(name: str, size: str, d_model: int, extra_blocks: int = 0) -> dict:
    spec = dict(MODELS[name])
    depth = (DEPTH[size] + extra_blocks) * spec.pop("depth", 1)
    heads = d_model // 64
    return {"d_model": d_model, "n_layers": depth, "n_heads": heads, "n_kv_heads": heads, "ssm_head_dim": 64,
            "d_state": 16, "expand": 2, "max_seq_len": CONTEXT, **spec}


def width_for(name: str, size: str) -> tuple[int, int, int]:
    """(d_model, extra blocks, parameters) nearest the size's target, d_model a multiple of 64.  The size's depth
    is kept when a width lands within 3% of the target; otherwise one or two blocks more or fewer may."""
    target, best = SIZES[size], None
    for extra in (0, 1, -1, 2, -2):
        for d in range(256, 4097, 64):
            n = count_params(preset(name, vocab_size=VOCAB, **model_fields(name, size, d, extra)))
            if best is None or abs(n - target) < abs(best[2] - target):
                best = (d, extra, n)
            if n > target:
                break
        if abs(best[2] - target) <= 0.03 * target:
            break
    return best


def main() -> None:
    here = Path(__file__).parent
    for size in SIZES:
        for name in MODELS:
            d, extra, n = width_for(name, size)
            steps = round(TOKENS[size] / (BATCH * CONTEXT))
            recipe = {
                "about": f"{name} at about {size.upper()} parameters ({n:,} with the GPT-NeoX vocabulary), "
                         f"{CONTEXT:,}-token context, {TOKENS[size] / 1e9:g}B tokens; see docs/recipes.md",
                "preset": name, "seq_len": CONTEXT, "params": SIZES[size], "vocab_size": VOCAB,
                "model": model_fields(name, size, d, extra),
                "train": {"steps": steps, "batch_size": BATCH, "lr": LR[size], "min_lr_ratio": 0.1, "warmup": 2000,
                          "weight_decay": 0.1, "grad_clip": 1.0, "precision": "bf16-mixed", "grad_accum": GRAD_ACCUM,
                          "checkpoint_activations": True, "eval_every": 1000,
                          "save_every": 1000, "parallel": "fsdp"},
            }
            (here / f"{name}-{size}.json").write_text(json.dumps(recipe, indent=1) + "\n")
            print(f"{name}-{size}: d_model {d}, {model_fields(name, size, d, extra)['n_layers']} layers, {n:,} parameters ({(n - SIZES[size]) / SIZES[size]:+.1%})", flush=True)


if __name__ == "__main__":
    main()
