"""AdamW with no weight decay on 1-D parameters and on parameters tagged `_no_weight_decay`;
linear warmup then cosine decay."""
from __future__ import annotations

import math

import torch

from bmojo.train.config import TrainConfig


def no_decay_names(model: torch.nn.Module) -> set[str]:
    """Names of the parameters without weight decay: 1-D ones and those tagged `_no_weight_decay` (read before
    any wrapping, which may replace the parameter objects and drop the tag)."""
    return {n for n, p in model.named_parameters() if p.ndim < 2 or getattr(p, "_no_weight_decay", False)}


def group_names(model: torch.nn.Module, no_decay: set[str] | None = None) -> list[list[str]]:
    """The optimizer's parameter order, by name: [decayed, not decayed] (tied weights appear once)."""
    no_decay = no_decay_names(model) if no_decay is None else no_decay
    decay, keep, seen = [], [], set()
    for n, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (keep if n in no_decay else decay).append(n)
    return [decay, keep]


def param_groups(model: torch.nn.Module, weight_decay: float, no_decay: set[str] | None = None) -> list[dict]:
    params = dict(model.named_parameters())
    decay, keep = group_names(model, no_decay)
    return [{"params": [params[n] for n in decay], "weight_decay": weight_decay},
            {"params": [params[n] for n in keep], "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, no_decay: set[str] | None = None) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay, no_decay), lr=cfg.lr, betas=cfg.betas)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    span = max(1, cfg.steps - cfg.warmup)
    progress = min(1.0, (step - cfg.warmup) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
