"""Eidetic scorers: how much each token is worth keeping in the eidetic memory (higher = keep).

A scorer is one nn.Module in one file with one call:
    scorer(u, f_prev, pos) -> (scores (B, T) float32 without gradient, aux_loss (a scalar) or None)
u (B, T, D) the layer's input, f_prev (B, T, D) the SSM output before each token (f_{t-1}; zeros where a scorer
has `uses_f_prev = False`), pos (T,) the tokens' absolute positions.  Parallel and recurrent modes call it the
same way (T = 1 when decoding), so both choose the same memory.  To add one: a class in a new file here and a
line in SCORERS.
"""
from __future__ import annotations

from bmojo.layers.scorers.innovation import InnovationScorer
from bmojo.layers.scorers.position import PositionScorer

SCORERS = {
    "innovation": lambda d_model, seed: InnovationScorer(d_model, learned=True),
    "norm": lambda d_model, seed: InnovationScorer(d_model, learned=False),
    "random": lambda d_model, seed: PositionScorer("random", seed),
    "recency": lambda d_model, seed: PositionScorer("recency", seed),
}
SELECTORS = tuple(SCORERS)


def make_scorer(name: str, d_model: int, seed: int = 0):
    if name not in SCORERS:
        raise ValueError(f"selector must be one of {SELECTORS}, got {name!r}")
    return SCORERS[name](d_model, seed)
