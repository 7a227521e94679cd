"""What every eidetic scorer shares (the interface is in bmojo.layers.scorers)."""
from __future__ import annotations

import torch.nn as nn


class Scorer(nn.Module):
    uses_f_prev = False  # whether the scorer reads the SSM output f_{t-1}

    def init_state(self, batch, device=None, dtype=None):
        """The scorer's empty state, or None for a scorer that keeps none (the default)."""
        return None
