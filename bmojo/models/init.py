"""The one init function: normal(init_std) for linear and embedding weights, zero biases, residual output
projections scaled by 1/sqrt(2 * n_layers) (GPT-2).  Modules tagged `_no_reinit` keep their own init
(the SSM's dt projection, the innovation predictor); SSM parameters A_log, D, dt_bias are set where
they are defined, as in mamba_ssm."""
from __future__ import annotations

import math

import torch.nn as nn

from bmojo.config import ModelConfig

RESIDUAL_OUT = ("o_proj", "out_proj", "down_proj")


def init_weights(model: nn.Module, cfg: ModelConfig) -> None:
    for name, m in model.named_modules():
        if getattr(m, "_no_reinit", False):
            continue
        if isinstance(m, nn.Linear):
            std = cfg.init_std
            if name.split(".")[-1] in RESIDUAL_OUT:
                std = std / math.sqrt(2 * cfg.n_layers)
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, cfg.init_std)
