"""Which tokens a B'MOJO layer's eidetic memory keeps: the selection, one module that the mixer calls once per mode.

  priority_t = s_t (+ g_t with selection_gate)     s: a scorer (bmojo.layers.scorers), no gradient
  g_t = w . x_t   (w . a_t with gate_input="conv": the attention's conv input, the token in its local context)
The gate is trained through what the memory is read with: gate_read="logit" adds log sigmoid(g) to the entry's
attention logit (`logit_bias`), gate_read="value" scales its value by sigmoid(g) (`values`).  `gate_penalty` adds
mean(sigmoid(g)) to the auxiliary loss, and a training forward from an empty state may keep more candidates than
memory_size (`capacity`: train_memory_size, annealed to memory_size over the first `train_memory_anneal` of
training), so that the candidates below the cut get a gradient too.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bmojo.config import ModelConfig
from bmojo.layers.scorers import make_scorer, uses_f_prev


class Selection(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, memory_size: int):
        super().__init__()
        self.memory_size, self.selector = memory_size, cfg.selector_for(layer_idx)
        self.uses_f_prev = uses_f_prev(self.selector)
        self.scorer = make_scorer(self.selector, cfg.d_model, seed=layer_idx)
        self.gate = None
        if cfg.selection_gate:
            self.gate = nn.Linear(cfg.d_model, 1, bias=False)  # a bias would shift every priority alike
            self.gate._no_reinit = True
            nn.init.zeros_(self.gate.weight)
        self.gate_read, self.gate_input, self.penalty = cfg.gate_read, cfg.gate_input, cfg.gate_penalty
        self.train_memory_size = cfg.train_memory_size or memory_size
        self.anneal, self.progress = cfg.train_memory_anneal, 0.0  # progress: set by BMojoLM.set_progress

    def capacity(self, state, return_state) -> int:
        """The memory's slots in this call: for a training forward from an empty state that returns no state,
        `train_memory_size`, shrinking linearly to memory_size over the first `train_memory_anneal` of training;
        else memory_size."""
        if not (self.training and state is None and not return_state):
            return self.memory_size
        done = min(1.0, self.progress / self.anneal) if self.anneal > 0 else 0.0
        return round(self.train_memory_size - done * (self.train_memory_size - self.memory_size))

    def _gate(self, x, a):
        return self.gate(a if self.gate_input == "conv" else x)[..., 0] if self.gate is not None else None

    def priority(self, x, a, f, f_prev0, t0, scorer_state):
        """Parallel: x, a (the attention input), f (B, T, D), f_prev0 (B, D) the SSM output before the call ->
        (priority (B, T) without gradient, the scorer's score, the gate logits (B, T) or None, aux loss, the
        scorer's state after the call)."""
        f_prev = torch.cat([f_prev0[:, None].to(f.dtype), f[:, :-1]], dim=1) if self.uses_f_prev else None
        pos = torch.arange(t0, t0 + x.shape[1], device=x.device)
        score, aux, scorer_state = self.scorer(x, f_prev, pos, scorer_state)
        gate = self._gate(x, a)  # trained through what is read
        if gate is None:
            return score, score, None, aux, scorer_state
        if self.training and self.penalty > 0 and gate.numel():  # only what the task pulls up stays high
            pen = self.penalty * torch.sigmoid(gate.float()).mean()
            aux = pen if aux is None else aux + pen
        return score + gate.detach(), score, gate, aux, scorer_state

    def priority_step(self, x_t, a_t, f_t, mem, pos: int):
        """Decode: one token (B, D) -> (priority (B,), gate logit (B,) or None); the scorer's state in `mem` (a
        MemoryState) is updated in place."""
        f_prev = mem.f_prev[:, None] if self.uses_f_prev else None
        at = None if self.uses_f_prev else torch.tensor([pos], device=x_t.device)  # position scorers only
        s, _, new = self.scorer(x_t[:, None], f_prev, at, mem.scorer)
        if self.uses_f_prev:
            mem.f_prev.copy_(f_t)
        if new is not None:  # decode states are written in place
            for old, t in zip(mem.scorer.tensors(), new.tensors()):
                old.copy_(t)
        gate = self._gate(x_t, a_t)
        return (s[:, 0] if gate is None else s[:, 0] + gate), gate

    def values(self, v, gate):
        """Values (B, n, Hk, Dh) as the memory stores them: scaled by sigmoid(gate (B, n)) with gate_read="value"."""
        if gate is None or self.gate_read != "value":
            return v
        return v * torch.sigmoid(gate)[..., None, None].to(v.dtype)

    @property
    def keeps_logits(self) -> bool:
        """Whether the memory keeps each entry's gate logit (gate_read="logit"), read as a logit bias."""
        return self.gate is not None and self.gate_read == "logit"

    def init_state(self, batch: int, chunk: int, d_model: int, device, dtype) -> dict:
        """The selection's part of an empty MemoryState."""
        return dict(f_prev=torch.zeros(batch, d_model, device=device, dtype=dtype) if self.uses_f_prev else None,
                    pend_gate=torch.zeros(batch, chunk, device=device, dtype=dtype) if self.gate is not None else None,
                    gate=torch.zeros(batch, self.memory_size, device=device, dtype=dtype) if self.keeps_logits
                    else None,
                    scorer=self.scorer.init_state(batch, device, dtype))


def logit_bias(gate):
    """The memory entries' gate logits -> their attention logit bias log sigmoid(g), or None without them."""
    return F.logsigmoid(gate) if gate is not None else None
