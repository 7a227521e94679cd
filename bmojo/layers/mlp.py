"""SwiGLU MLP (Llama names: gate_proj, up_proj, down_proj)."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from bmojo.config import ModelConfig


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.d_hidden, cfg.d_model, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
