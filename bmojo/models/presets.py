"""Presets: the model family as choices of layer pattern, and sizing to a parameter budget."""
from __future__ import annotations

from dataclasses import fields

import torch

from bmojo.config import ConfigError, ModelConfig

PRESETS: dict[str, dict] = {
    "transformer": dict(pattern="A"),  # Llama/Mistral-style Transformer
    "swa": dict(pattern="S"),  # sliding-window Transformer
    "mamba": dict(pattern="M", mlp=False, ssm_kind="mamba1"),  # Mamba (HF MambaForCausalLM layout)
    "hybrid": dict(pattern="MA"),  # Jamba-style interleave (use pattern="MS" for Samba-style)
    # B'MOJO as bmojo trains it by default: the SSM output also reaches the residual stream (parallel fusion, as
    # in Hymba), which the language-modelling ablation found to be the largest gain (docs/language-modelling.md)
    "bmojo-f": dict(pattern="F", ssm_residual=True),  # fading memory in every layer
    "bmojo": dict(pattern="B", ssm_residual=True),  # fading + eidetic memory
    # the layer exactly as the paper and its official code define it: the SSM output is used only as the fading
    # keys and values at lags >= W
    "bmojo-paper": dict(pattern="B", ssm_residual=False),
    "bmojo-f-paper": dict(pattern="F", ssm_residual=False),
    # B'MOJO with the learned selection that recall needs (benchmarks/results/selection_ablation and
    # benchmarks/results/recall_length/selection), the main job's `bmojo`: the gate read as an attention logit and
    # ranking alone (the innovation score cannot tell MQAR's random filler from its pairs); the gate reads the attention
    # input (`gate_input=conv`: each token in its local context; on the bare token the first layer's gate can rank
    # token ids only, which tell no pair from filler); the eidetic keys read at the window's edge (`memory_rope=edge`:
    # distances the model saw in training, at any length); a training pool that shrinks to M over the first half of
    # training (from `train_memory_size`: every token of the main job's 64; `bmojo compare` sets it to the task's
    # sequence length); the fading segment starting switched off; a cheaper SSM (expand 1, d_state 8) so that the
    # parameter budget buys width; no SSM residual (for recall it gave 0.631 against 0.782 at seed 0, 0.568 against
    # 0.564 at seed 1: docs/language-modelling.md); no gate penalty (with gate_input=conv the conv's bias lets the
    # penalty push every gate down at once, switching the memory off before the read learns: docs/recall.md)
    "bmojo-recall": dict(pattern="B", ssm_residual=False, selection_gate=True, gate_read="logit", selector="none",
                         gate_input="conv", memory_rope="edge", train_memory_size=64, train_memory_anneal=0.5,
                         fading_gate=-4.0, expand=1, d_state=8),
}


def preset(name: str, **overrides) -> ModelConfig:
    """The preset's config, with any ModelConfig field overridden."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; allowed: {sorted(PRESETS)}")
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown ModelConfig field(s) {unknown}")
    return ModelConfig(**{**PRESETS[name], **overrides})


def count_params(cfg: ModelConfig) -> int:
    """Parameter count without allocating memory (built on the meta device)."""
    from bmojo.models.lm import BMojoLM

    with torch.device("meta"):
        return BMojoLM(cfg).num_params()


def size_to_params(name: str, target: int, **overrides) -> ModelConfig:
    """The preset with the d_model (a multiple of a step that keeps heads and SSM heads valid) whose
    parameter count is closest to `target`; other fields as given."""
    base = preset(name, **overrides)
    step = 2 * base.n_heads
    while base.mamba2_heads and (base.expand * step) % base.ssm_head_dim:
        step += 2 * base.n_heads
    best = None
    for d in range(step, 16 * 1024 + 1, step):
        try:
            cfg = preset(name, **{**overrides, "d_model": d})
        except ConfigError:
            continue
        n = count_params(cfg)
        if best is None or abs(n - target) < abs(best[0] - target):
            best = (n, cfg)
        if n > target:
            break
    if best is None:
        raise ConfigError(f"no valid d_model for preset {name!r} with {overrides}")
    return best[1]
