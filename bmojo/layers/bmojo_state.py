"""What a B'MOJO layer keeps between calls (its decode state) and what one parallel call's eidetic memory computed,
with the gathers that read the memory's key/value table.  Used by bmojo.layers.bmojo."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bmojo.layers.attention import AttentionState
from bmojo.layers.ssm import SSMState
from bmojo.layers.state import LayerState
from bmojo.ops.eidetic import EideticOut


@dataclass
class MemoryState(LayerState):
    k: torch.Tensor  # (B, M, Hk, Dh)
    v: torch.Tensor  # (B, M, Hk, Dh)
    score: torch.Tensor  # (B, M) float32: the score each entry was selected with (before decay), -inf = empty
    pos: torch.Tensor  # (B, M) long, -1 = empty
    pend_score: torch.Tensor  # (B, C) scores of the current chunk's tokens so far
    pend_pos: torch.Tensor  # (B, C)
    f_prev: torch.Tensor | None = None  # (B, D) last SSM output, for the innovation test
    pend_gate: torch.Tensor | None = None  # (B, C) selection-gate logits of the current chunk's tokens
    gate: torch.Tensor | None = None  # (B, M) the entries' gate logits (gate_read="logit": read as a logit bias)
    scorer: LayerState | None = None  # the scorer's own state (bmojo.layers.scorers), when it keeps one


@dataclass
class BMojoState(AttentionState):
    ssm: SSMState | None = None
    fk: torch.Tensor | None = None  # (B, 2W, Hk, Dh) fading keys delay line
    fv: torch.Tensor | None = None
    mem: MemoryState | None = None
    store: object | None = None  # bmojo.memory.LayerStore: the long-term store, when one is attached


def gather_logits(table: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """table (B, n), src (B, ...) row indices (-1 = empty, read as row 0) -> (B, ...)."""
    return table.gather(1, src.clamp(min=0).reshape(src.shape[0], -1)).view(src.shape)


def gather_rows(table: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """table (B, n, Hk, Dh), src (B, ...) row indices (-1 = empty, read as row 0) -> (B, ..., Hk, Dh)."""
    idx = src.clamp(min=0).reshape(src.shape[0], -1)
    out = table.gather(1, idx[..., None, None].expand(-1, -1, *table.shape[2:]))
    return out.view(*src.shape, *table.shape[2:])


@dataclass
class EideticTable:
    """The key/value table a memory update's `src` indexes: [the memory's slots | the candidates], with the gate
    logits beside it when the memory keeps them (gate_read="logit")."""

    k: torch.Tensor  # (B, n, Hk, Dh)
    v: torch.Tensor
    gate: torch.Tensor | None = None  # (B, n)

    def take(self, src: torch.Tensor) -> tuple:
        """src (B, ...) rows (-1 = empty) -> (keys, values (B, ..., Hk, Dh), gate logits (B, ...) or None)."""
        return (gather_rows(self.k, src), gather_rows(self.v, src),
                gather_logits(self.gate, src) if self.gate is not None else None)


@dataclass
class EideticCall:
    """One parallel call's eidetic memory: the update (bmojo.ops.eidetic), the table its `src` indexes, the scores."""

    upd: EideticOut
    table: EideticTable  # (B, M + stream, ...)
    scores: torch.Tensor  # (B, T) the scorer's (without the gate)
    aux_loss: torch.Tensor | None
    f_prev0: torch.Tensor
    g_stream: torch.Tensor | None  # (B, stream) the gate logits of the raw stream
    scorer_state: LayerState | None = None  # the scorer's state after the call's last token

    def blocks(self) -> tuple:
        """What each query block reads: keys, values (B, nb, M, Hk, Dh), positions (B, nb, M), gate logits or None."""
        k, v, gate = self.table.take(self.upd.blocks.src)
        return k, v, self.upd.blocks.pos, gate
