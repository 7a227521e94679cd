"""Upcycling: a B'MOJO model (`bmojo` or `bmojo-f`) built from a trained Transformer or Mamba, so that
fine-tuning starts from pretrained weights (for example an HF Llama or Mamba imported with `bmojo convert`).

Every source tensor is copied into the place that does the same job, and the new parts start so that the
model computes what its source computes, or close to it:

- from `mamba` (all layers M, Mamba-1, no MLP): each layer's SSM is the source's Mamba mixer, and the layer
  adds it to its output (`ssm_residual=True`); the attention output projection starts at zero. The
  upcycled model's logits equal the source's exactly, at any length. The attention projections
  (q, k, v) start at bmojo's initialisation and learn once `o_proj` leaves zero.
- from `transformer` (all layers A): q, k, v, o, the MLPs and the norms are copied, and the raw window is
  the source's attention restricted to the last W tokens. The fading keys and values get their own
  projections (`tie_fading=False`), started at zero. On texts no longer than the window W, the logits equal
  the source's. Past W, each query also sees its eidetic memory and the fading band: up to W zero keys with
  zero values, which take a share of the softmax until fine-tuning trains them. Tokens beyond W + the memory
  are out of reach by design; that is the point of the bounded state.

`benchmarks/upcycle.py` measures how close the start is on text, against the source and after fine-tuning.
"""
from __future__ import annotations

import torch

from bmojo.config import ConfigError, ModelConfig
from bmojo.models.lm import BMojoLM
from bmojo.models.presets import PRESETS

TARGETS = ("bmojo", "bmojo-f")


def upcycled_config(src: ModelConfig, target: str = "bmojo", **overrides) -> ModelConfig:
    """The B'MOJO config that holds `src`'s weights; `overrides` set the new parts (window, memory_size,
    chunk, d_state, ...)."""
    if target not in TARGETS:
        raise ConfigError(f"upcycle target {target!r}: allowed {list(TARGETS)}")
    kinds = set(src.pattern)
    base = {k: v for k, v in src.to_dict().items() if k != "pattern"}
    base.update(PRESETS[target])
    if kinds == {"M"}:
        if src.ssm_kind != "mamba1" or src.mlp:
            raise ConfigError("upcycling from Mamba needs the `mamba` preset's layout (ssm_kind='mamba1', mlp=False)")
        base.update(ssm_kind="mamba1", mlp=False, ssm_residual=True, tie_fading=True, attn_conv=False)
    elif kinds == {"A"}:
        base.update(tie_fading=False, ssm_residual=False)
    else:
        raise ConfigError(f"upcycling needs a Transformer (pattern 'A') or a Mamba (pattern 'M') source, "
                          f"got pattern {src.pattern!r}")
    fixed = {"d_model", "n_layers", "vocab_size", "tie_embeddings", "mlp", "ssm_kind"} | (
        {"d_state", "d_conv", "expand", "dt_rank"} if kinds == {"M"} else {"n_heads", "n_kv_heads", "d_ff"})
    bad = sorted(set(overrides) & fixed)
    if bad:
        raise ConfigError(f"upcycling keeps the source's shapes; cannot override {bad}")
    base.update(overrides)
    return ModelConfig.from_dict(base)


def upcycle(source: BMojoLM, target: str = "bmojo", **overrides) -> BMojoLM:
    """A new `target` model holding `source`'s weights (see the module docstring for what starts where)."""
    cfg = upcycled_config(source.cfg, target, **overrides)
    torch.manual_seed(0)
    model = BMojoLM(cfg)
    src = source.state_dict()
    dst = model.state_dict()
    from_mamba = set(source.cfg.pattern) == {"M"}
    copied = {}
    for name, t in src.items():
        parts = name.split(".")
        if from_mamba and parts[0] == "layers" and parts[2] == "mixer":  # the Mamba mixer is the layer's SSM
            name = ".".join(parts[:3] + ["ssm"] + parts[3:])
        if name not in dst or dst[name].shape != t.shape:
            raise ConfigError(f"upcycle: source tensor {name} {tuple(t.shape)} has no place in the {target} model")
        copied[name] = t
    with torch.no_grad():
        for name, t in copied.items():
            dst[name].copy_(t)
        for block in model.layers:
            m = block.mixer
            if from_mamba:
                m.o_proj.weight.zero_()
            else:
                m.fk_proj.weight.zero_()
                m.fv_proj.weight.zero_()
    return model
