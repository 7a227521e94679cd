"""The innovation test: a token is worth keeping when the SSM could not predict it.

    s_t = ||u_t - P f_{t-1}||^2 / D        (`norm`: the same with P = I)

P is a learned D x D predictor, zero at init, trained only by its own auxiliary loss ||sg(u_t) - P sg(f_{t-1})||^2
on detached inputs, so it never changes the main gradients; the scores carry no gradient (selection is hard).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bmojo.layers.scorers.base import Scorer


class InnovationScorer(Scorer):
    uses_f_prev = True

    def __init__(self, d_model: int, learned: bool = True):
        super().__init__()
        self.predictor = None
        if learned:
            self.predictor = nn.Linear(d_model, d_model, bias=False)
            self.predictor._no_reinit = True
            nn.init.zeros_(self.predictor.weight)

    def forward(self, u, f_prev, pos=None, state=None):
        """u, f_prev (B, T, D) -> scores (B, T) float32, aux_loss (training with a learned P) or None, no state."""
        u, f_prev = u.detach(), f_prev.detach().to(u.dtype)
        pred = self.predictor(f_prev) if self.predictor is not None else f_prev  # P f_{t-1}
        aux = (u - pred).pow(2).mean() if self.predictor is not None and self.training else None
        with torch.no_grad():
            return (u - pred).float().pow(2).mean(-1), aux, None
