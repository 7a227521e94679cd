"""Eidetic memory: which tokens to keep (scores); the memory update is bmojo.ops.eidetic.

Scores (higher = more worth keeping), for tokens u (B, T, D) at absolute positions `pos` (T,):
  innovation  s_t = ||u_t - P f_{t-1}||^2 / D      (the SSM could not predict the token)
  norm        the same with P = I
  random      a fixed hash of the position (same in every mode and run)
  recency     the position itself (no test: the most recent tokens are kept)
"""
from __future__ import annotations

import torch

SELECTORS = ("innovation", "norm", "random", "recency")


def innovation_scores(u, f_prev, P=None):
    """u, f_prev (B, T, D); P (D, D) or None for the identity -> (B, T)."""
    pred = f_prev if P is None else f_prev @ P.t()
    return (u - pred).pow(2).mean(-1)


def position_scores(kind: str, pos: torch.Tensor, batch: int, seed: int = 0) -> torch.Tensor:
    """`random` or `recency` scores for positions pos (T,) -> (batch, T) float32."""
    if kind == "recency":
        s = pos.to(torch.float32)
    elif kind == "random":  # integer hash of (position, seed): uniform in [0, 1), reproducible everywhere
        h = (pos.to(torch.int64) * 2654435761 + (seed + 1) * 40503) % 4294967296
        h = (h ^ (h >> 15)) * 2246822519 % 4294967296
        s = (h ^ (h >> 13)).to(torch.float32) / 4294967296.0
    else:
        raise ValueError(f"position_scores: kind must be 'random' or 'recency', got {kind!r}")
    return s.unsqueeze(0).expand(batch, -1)
