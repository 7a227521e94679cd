"""Baseline scorers that look only at a token's position (for ablations of the innovation test):
    random   a fixed hash of (position, seed), uniform in [0, 1): the same in every mode, run and device
    recency  the position itself: the most recent tokens before the window are kept
    none     zero for every token: with the selection gate, the gate alone ranks (ties keep the older token)
"""
from __future__ import annotations

import torch
from bmojo.layers.scorers.base import Scorer

KINDS = ("random", "recency", "none")


def position_scores(kind: str, pos: torch.Tensor, batch: int, seed: int = 0) -> torch.Tensor:
    """`random` or `recency` scores for positions pos (T,) -> (batch, T) float32."""
    if kind == "recency":
        s = pos.to(torch.float32)
    elif kind == "none":
        s = torch.zeros(pos.shape, dtype=torch.float32, device=pos.device)
    elif kind == "random":  # integer hash of (position, seed): uniform in [0, 1), reproducible everywhere
        h = (pos.to(torch.int64) * 2654435761 + (seed + 1) * 40503) % 4294967296
        h = (h ^ (h >> 15)) * 2246822519 % 4294967296
        s = (h ^ (h >> 13)).to(torch.float32) / 4294967296.0
    else:
        raise ValueError(f"position_scores: kind must be one of {KINDS}, got {kind!r}")
    return s.unsqueeze(0).expand(batch, -1)


class PositionScorer(Scorer):

    def __init__(self, kind: str, seed: int = 0):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"PositionScorer: kind must be one of {KINDS}, got {kind!r}")
        self.kind, self.seed = kind, seed

    def forward(self, u, f_prev=None, pos=None, state=None):
        """u (B, T, D), pos (T,) -> scores (B, T) float32, no auxiliary loss, no state."""
        return position_scores(self.kind, pos, u.shape[0], self.seed), None, None
