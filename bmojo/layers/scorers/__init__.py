"""Eidetic scorers: how much each token is worth keeping in the eidetic memory (higher = keep).

A scorer is one `Scorer` (bmojo.layers.scorers.base, an nn.Module) in one file with two calls:
    scorer(u, f_prev, pos, state=None) -> (scores (B, T) float32 without gradient, aux_loss (a scalar) or None,
                                           the scorer's state after the last token, or None)
    scorer.init_state(batch, device, dtype) -> an empty state (a LayerState, part of the decode state) or None
                                              (the base class: None)
u (B, T, D) the layer's input, f_prev (B, T, D) the SSM output before each token (f_{t-1}; None where a scorer
has `uses_f_prev = False`), pos (T,) the tokens' absolute positions, state what the scorer returned for the
tokens before (None at a sequence's start; never changed in place).  Parallel and recurrent modes call it the
same way (T = 1 when decoding), so both choose the same memory.  To add one: a class in a new file here and a
line in SCORERS.
"""
from __future__ import annotations

from bmojo.layers.scorers.associative import AssociativeScorer
from bmojo.layers.scorers.innovation import InnovationScorer
from bmojo.layers.scorers.position import PositionScorer

SCORERS = {  # name -> (class, how to build it from (d_model, seed))
    "innovation": (InnovationScorer, lambda d_model, seed: InnovationScorer(d_model, learned=True)),
    "norm": (InnovationScorer, lambda d_model, seed: InnovationScorer(d_model, learned=False)),
    "assoc": (AssociativeScorer, lambda d_model, seed: AssociativeScorer(d_model)),
    "random": (PositionScorer, lambda d_model, seed: PositionScorer("random", seed)),
    "recency": (PositionScorer, lambda d_model, seed: PositionScorer("recency", seed)),
    "none": (PositionScorer, lambda d_model, seed: PositionScorer("none", seed)),
}
SELECTORS = tuple(SCORERS)


def _entry(name: str):
    if name not in SCORERS:
        raise ValueError(f"selector must be one of {SELECTORS}, got {name!r}")
    return SCORERS[name]


def make_scorer(name: str, d_model: int, seed: int = 0):
    return _entry(name)[1](d_model, seed)


def uses_f_prev(name: str) -> bool:
    """Whether the scorer reads the SSM output f_{t-1} (so a layer needs an SSM for it)."""
    return _entry(name)[0].uses_f_prev
