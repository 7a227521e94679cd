"""Pre-RMSNorm residual block: h += mixer(norm(h)); then optionally h += mlp(norm(h))."""
from __future__ import annotations

import torch.nn as nn

from bmojo.config import ModelConfig
from bmojo.layers.attention import Attention
from bmojo.layers.bmojo import BMojoMixer
from bmojo.layers.mlp import SwiGLU
from bmojo.layers.norm import RMSNorm
from bmojo.layers.state import MixerOutput
from bmojo.layers.ssm import make_ssm


def make_mixer(cfg: ModelConfig, layer_idx: int, impl) -> nn.Module:
    kind = cfg.layer_kind(layer_idx)
    if kind == "A":
        return Attention(cfg, window=None, impl=impl)
    if kind == "S":
        return Attention(cfg, window=cfg.window, impl=impl)
    if kind == "M":
        return make_ssm(cfg, impl)
    return BMojoMixer(cfg, layer_idx, memory=(kind == "B"), impl=impl)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, impl):
        super().__init__()
        self.kind = cfg.layer_kind(layer_idx)
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = make_mixer(cfg, layer_idx, impl)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps) if cfg.mlp else None
        self.mlp = SwiGLU(cfg) if cfg.mlp else None

    def forward(self, h, state=None, return_state=True, record=False) -> MixerOutput:
        """h (B, T, D) -> MixerOutput(h, state, aux_loss, record) (the last two from the mixer)."""
        kw = {"record": True} if record and isinstance(self.mixer, BMojoMixer) else {}
        out = MixerOutput.of(self.mixer(self.norm(h), state, return_state, **kw))
        h = h + out[0]
        if self.mlp is not None:
            h = h + self.mlp(self.mlp_norm(h))
        return MixerOutput(h, out[1], out.aux_loss, out.record)

    def step(self, h_t, state):
        y, state = self.mixer.step(self.norm(h_t), state)
        h_t = h_t + y
        if self.mlp is not None:
            h_t = h_t + self.mlp(self.mlp_norm(h_t))
        return h_t, state
