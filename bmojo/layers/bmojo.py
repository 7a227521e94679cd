"""The B'MOJO mixer: one attention over [store | eidetic memory | fading tokens | raw window].

  f = SSM(x)                                  fading tokens; f_t summarises tokens <= t
  q, k, v = Wq a, Wk a, Wv a  (a = x, or a short causal conv of x when attn_conv)
  fk, fv = Wk f, Wv f        (tied; untied with tie_fading=False), rotated at their own positions
  query i attends, under one softmax, to raw keys (i-W, i], fading keys (i-2W, i-W] and the eidetic
  entries stored before its chunk at positions <= i-W.
  y = Wo o  (+ f with ssm_residual)

Eidetic memory: once per chunk of C tokens the memory keeps the M candidates of highest priority (bmojo.ops.eidetic,
one op without a loop); the priority is the selection's (bmojo.layers.selection: a scorer, e.g. the innovation test
s_t = ||x_t - P f_{t-1}||^2 / D, plus an optional learned gate).  P is trained only by its own auxiliary loss on
detached inputs, returned with the output (`MixerOutput.aux_loss`), so it never changes the main gradients.
`memory_size=0` gives B'MOJO-F; `fading=False, memory_size=0` gives sliding-window attention.
`fading_gate` adds one learned logit offset to the fading keys (e.g. starting switched off); `null_key` one learned
key and value every query sees (joined to the per-query entries, after the store's); `memory_rope=edge` reads every
eidetic entry as if at the window's edge before its block.
Long-term store (bmojo.memory): with a store in the state, the tokens that leave the memory go there and each
query also reads its top-k entries; `train_store_topk` makes a training forward read the store its own
evictions would build, so that a model learns to use one.  The store is read and written at the layer's edge, once
per call (bmojo.memory.layer_io).

Both modes lay out what a query reads with one method (`_segments`) and hand it to the attention op of their mode
(bmojo.ops.attention: `window_attention` in parallel, `window_attention_step` in decode); both update the memory
with one op (`_update`) over a table of [memory slots | candidates] (`EideticTable`).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bmojo.config import ModelConfig
from bmojo.layers.attention import Attention, ring_from_stream, ring_read, ring_write
from bmojo.layers.bmojo_state import BMojoState, EideticCall, EideticTable, MemoryState, gather_rows
from bmojo.layers.bmojo_store import StoreReads
from bmojo.layers.scorers import uses_f_prev
from bmojo.layers.selection import Selection, logit_bias
from bmojo.layers.ssm import make_ssm
from bmojo.layers.state import MixerOutput, check_call
from bmojo.ops.attention import (BlockEntries, QueryEntries, Ring, Segments, Stream, window_attention_shares,
                                 window_attention_step)
from bmojo.ops.eidetic import Entries, eidetic_memory
from bmojo.ops.rope import apply_rope, rope_cos_sin

_RENAMED = {"predictor.weight": "selection.scorer.predictor.weight", "scorer.": "selection.scorer.",
            "gate.weight": "selection.gate.weight"}


def _rename_old_keys(state_dict, prefix, *args):
    """Checkpoints from before the selection module name the scorer `scorer.` (before that, the innovation predictor
    `predictor.weight`) and the gate `gate.weight`, directly on the mixer."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        for old, new in _RENAMED.items():
            if key[len(prefix):].startswith(old):
                state_dict[prefix + new + key[len(prefix) + len(old):]] = state_dict.pop(key)
                break


class BMojoMixer(StoreReads, Attention):
    def __init__(self, cfg: ModelConfig, layer_idx: int = 0, memory: bool = True, impl="fast"):
        super().__init__(cfg, window=cfg.window, impl=impl)
        self.layer_idx = layer_idx
        self.fading, self.ssm_residual, self.memory_rope = cfg.fading, cfg.ssm_residual, cfg.memory_rope
        self.memory_size = cfg.memory_size if memory else 0
        self.rule, self.decay, self.per_chunk = cfg.memory_rule, cfg.memory_decay, cfg.fifo_per_chunk
        self.train_store_topk = cfg.train_store_topk if self.memory_size > 0 else 0
        f_prev = self.memory_size > 0 and uses_f_prev(cfg.selector_for(layer_idx))  # the innovation test reads f
        self.ssm = make_ssm(cfg, self.backend) if (self.fading or self.ssm_residual or f_prev) else None
        self.fading_bias = None
        if self.fading and cfg.fading_gate is not None:  # one learned logit offset on the fading segment
            self.fading_bias = nn.Parameter(torch.tensor(float(cfg.fading_gate)))
        if not cfg.tie_fading and self.fading:
            Hk, Dh = cfg.kv_heads, cfg.head_dim
            self.fk_proj = nn.Linear(cfg.d_model, Hk * Dh, bias=False)
            self.fv_proj = nn.Linear(cfg.d_model, Hk * Dh, bias=False)
        # (built after the SSM: module construction draws random numbers, so this order keeps seeded inits)
        self.selection = Selection(cfg, layer_idx, self.memory_size) if self.memory_size > 0 else None
        self.null_k = self.null_v = None
        if self.memory_size > 0 and cfg.null_key:  # zero key and value: at init a query gives it weight exp(0)
            self.null_k = nn.Parameter(torch.zeros(cfg.n_heads, cfg.head_dim))
            self.null_v = nn.Parameter(torch.zeros(cfg.n_heads, cfg.head_dim))
        self._register_load_state_dict_pre_hook(_rename_old_keys)

    # ---- parallel mode ----------------------------------------------------------------------------------
    def forward(self, x, state=None, return_state=True, record=False) -> MixerOutput:
        """x (B, T, D) -> MixerOutput (y (B, T, D), state; aux_loss: the scorer's and the gate's penalty; record:
        with record=True, the attention shares, scores and memory positions, computed beside the kernel, never
        instead of it)."""
        check_call(self, x, state)
        B, T, D = x.shape
        t0 = state.pos if state is not None else 0
        # 1. attention input and fading memory f = SSM(x); q, k, v with RoPE after the window's history
        a, conv_state = self._attn_input(x, state, return_state)
        f, ssm_state = self.ssm(x, state.ssm if state is not None else None, return_state) if self.ssm else (None, None)
        cos, sin = self._rope(t0, T, x.device, x.dtype)
        q, k, v = self._qkv(a, cos, sin)  # (B, T, H|Hk, Dh)
        raw, fading = Stream(*self._raw_stream(k, v, state, t0)), self._fading_stream(f, cos, sin, state, t0)
        # 2. eidetic memory: priorities -> the memory update -> what each query block reads; the store's top-k
        mem = self._eidetic(x, a, f, raw, state, t0, return_state) if self.memory_size > 0 else None
        store = self._store_entries(q, state, t0, mem)  # (before the blocks: a fixed order of gradient sums)
        segs = self._segments(q, raw, fading, mem.blocks() if mem else None, store, t0)
        # 3. one softmax over [store | eidetic | fading | raw window]
        o = self.backend.window_attention(q, segs, self.window, chunk=self.chunk, q_start=t0, scale=self.scale)
        y = self.o_proj(o.reshape(B, T, D))
        if self.ssm_residual:
            y = y + f
        new_state = self._new_state(state, raw, fading, conv_state, ssm_state, mem, f, t0 + T) if return_state \
            else None
        return MixerOutput(y, new_state, mem.aux_loss if mem is not None else None,
                           self._record(q, segs, t0, mem) if record else None)

    def _segments(self, q, raw, fading, memory, store, t0) -> Segments:
        """What the queries q (B, T, H, Dh) from position t0 read, in either mode: the raw and fading segments, the
        eidetic entries memory = (keys, values (B, nb, M, Hk, Dh), positions (B, nb, M), gate logits or None) of
        each query block, with memory_rope=edge rotated as if at the window's edge before their block (block b at
        a0 + bC - W, a0 = t0 - t0 mod C), and the store's per-query (keys, values, visible) with the null key."""
        entries, store = None, self._with_null(store, q)
        if memory is not None:
            k, v, pos, gate = memory
            if self.memory_rope == "edge":
                edge = t0 - t0 % self.chunk - self.window  # block 0's; block b's is C*b further on
                if k.shape[1] > 1:
                    edge = edge + self.chunk * torch.arange(k.shape[1], device=q.device)[None, :, None]
                k = self._at_edge(k, pos, edge)
            entries = BlockEntries(k, v, pos, logit_bias(gate))
        return Segments(raw, fading, entries, QueryEntries(*store) if store is not None else None)

    # ---- fading tokens ----------------------------------------------------------------------------------
    def _fading_kv(self, f, cos, sin):
        if not hasattr(self, "fk_proj"):
            return self._kv(f, cos, sin)
        B, T, _ = f.shape
        fk = self.fk_proj(f).view(B, T, self.n_kv_heads, self.head_dim)
        return apply_rope(fk, cos, sin), self.fv_proj(f).view(B, T, self.n_kv_heads, self.head_dim)

    def _fading_stream(self, f, cos, sin, state, t0) -> Stream | None:
        """Fading keys/values of the new tokens after the state's delay line of 2W."""
        if not self.fading:
            return None
        fk, fv = self._fading_kv(f, cos, sin)
        if state is None:
            return Stream(fk, fv, t0, self.fading_bias)
        hk, f_start = ring_read(state.fk, t0, 2 * self.window)
        hv, _ = ring_read(state.fv, t0, 2 * self.window)
        return Stream(torch.cat([hk, fk], 1), torch.cat([hv, fv], 1), f_start, self.fading_bias)

    def _at_edge(self, k, pos, edge):
        """Eidetic keys k (B, ..., M, Hk, Dh), rotated at their own positions pos (B, ..., M), rotated once more by
        edge - pos: as if at `edge` (RoPE rotations compose)."""
        delta = torch.as_tensor(edge, device=pos.device) - pos
        cos, sin = rope_cos_sin(delta.flatten(), self.head_dim, self.rope_theta, k.dtype, self.rope_fraction)
        shape = (*delta.shape, 1, self.head_dim)  # (B, ..., M, 1, Dh)
        return apply_rope(k, cos.view(shape), sin.view(shape))

    # ---- eidetic memory ---------------------------------------------------------------------------------
    def _update(self, priority, start, memory, pending, src_offset):
        """The memory update over one call's candidates (bmojo.ops.eidetic), in either mode."""
        return eidetic_memory(priority, start=start, chunk=self.chunk, memory=memory, pending=pending,
                              src_offset=src_offset, rule=self.rule, decay=self.decay, per_chunk=self.per_chunk)

    def _eidetic(self, x, a, f, raw: Stream, state, t0, return_state) -> EideticCall:
        """Priorities (the selection's), the memory update over the key/value table, and what attention reads."""
        B, M, sel = x.shape[0], self.selection.capacity(state, return_state), self.selection
        f_prev0 = state.mem.f_prev if (state is not None and sel.uses_f_prev) else x.new_zeros(B, self.d_model)
        prio, scores, gate, aux, scorer_state = sel.priority(x, a, f, f_prev0, t0,
                                                             state.mem.scorer if state is not None else None)
        g_stream = self._gate_stream(gate, state, t0, raw.start)
        table, mem0, pend = self._memory_table(raw, g_stream, state, t0, M)
        upd = self._update(prio, t0, mem0, pend, M + t0 - raw.start)
        return EideticCall(upd, table, scores, aux, f_prev0, g_stream, scorer_state)

    def _gate_stream(self, gate, state, t0, k_start):
        """The gate logits (B, stream) of the raw stream (history + new tokens), or None without a gate: the
        history's from the state's pending candidates (only they can still enter the memory), else 0."""
        if gate is None:
            return None
        B, n = gate.shape[0], t0 % self.chunk
        g_hist = gate.new_zeros(B, t0 - k_start)
        if state is not None and n:
            g_hist[:, state.mem.pend_pos[0, :n] - k_start] = state.mem.pend_gate[:, :n].to(gate.dtype)
        return torch.cat([g_hist, gate], 1)

    def _memory_table(self, raw: Stream, g_stream, state, t0, M):
        """The table the memory's `src` indexes, [the state's M memory slots | the raw stream from raw.start], with
        the values as the memory stores them and the gate logits beside (gate_read="logit"), and the memory and
        pending candidates as Entries into it."""
        B, n, dev = raw.k.shape[0], t0 % self.chunk, raw.k.device
        vs = self.selection.values(raw.v, g_stream)
        if state is None:
            k0, v0 = raw.k.new_zeros(B, M, *raw.k.shape[2:]), vs.new_zeros(B, M, *vs.shape[2:])
            g0 = g_stream.new_zeros(B, M) if self.selection.keeps_logits else None
            mem0, pend = Entries.empty(B, M, dev), Entries.empty(B, 0, dev)
        else:
            mem = state.mem
            k0, v0, g0 = mem.k, mem.v, mem.gate.to(g_stream.dtype) if mem.gate is not None else None
            pend_pos = mem.pend_pos[:, :n]
            mem0 = Entries(mem.score, mem.pos, torch.arange(M, device=dev).expand(B, M))
            pend = Entries(mem.pend_score[:, :n], pend_pos, M + pend_pos - raw.start)
        gate = torch.cat([g0, g_stream], 1) if g0 is not None else None
        return EideticTable(torch.cat([k0, raw.k], 1), torch.cat([v0, vs], 1), gate), mem0, pend

    def _memory_state(self, mem: EideticCall, f) -> MemoryState:
        """The memory after the call's last complete chunk, and the unfinished chunk's candidates."""
        upd, B, C, dev = mem.upd, mem.table.k.shape[0], self.chunk, mem.table.k.device
        n = upd.pending.pos.shape[1]
        pend_score = torch.full((B, C), float("-inf"), device=dev)
        pend_pos = torch.full((B, C), -1, dtype=torch.long, device=dev)
        pend_score[:, :n], pend_pos[:, :n] = upd.pending.score, upd.pending.pos
        pend_gate = None
        if mem.g_stream is not None:
            pend_gate = torch.zeros(B, C, device=dev, dtype=mem.g_stream.dtype)
            pend_gate[:, :n] = mem.g_stream.gather(1, upd.pending.src - self.memory_size)
        f_prev = (f[:, -1] if f.shape[1] > 0 else mem.f_prev0) if self.selection.uses_f_prev else None
        k, v, gate = mem.table.take(upd.memory.src)
        return MemoryState(k=k, v=v, score=upd.memory.score, pos=upd.memory.pos, pend_score=pend_score,
                           pend_pos=pend_pos, f_prev=f_prev, pend_gate=pend_gate, gate=gate, scorer=mem.scorer_state)

    def _new_state(self, state, raw: Stream, fading: Stream | None, conv_state, ssm_state, mem, f, end) -> BMojoState:
        """The rings hold the last W raw and 2W fading tokens before `end`; the memory its entries and the
        unfinished chunk's candidates; the store, when attached, carries over."""
        r = self._raw_state(raw.k, raw.v, raw.start, end, conv_state, state)
        fk = fv = None
        if fading is not None:
            fk = ring_from_stream(fading.k, fading.start, end, 2 * self.window)
            fv = ring_from_stream(fading.v, fading.start, end, 2 * self.window)
        return BMojoState(k=r.k, v=r.v, conv=r.conv, pos=r.pos, ssm=ssm_state, fk=fk, fv=fv,
                          mem=self._memory_state(mem, f) if mem is not None else None,
                          store=state.store if state is not None else None)

    def _record(self, q, segs, t0, mem):
        """Inspection: where each query's attention went, from an explicit softmax beside the kernel."""
        _, shares = window_attention_shares(q, segs, self.window, chunk=self.chunk, q_start=t0, scale=self.scale)
        return {"shares": {name: sh.mean(-1) for name, sh in shares.items()},  # (B, T), head mean
                "scores": mem.scores if mem is not None else None,
                "memory_positions": torch.cat([mem.upd.blocks.pos.flatten(1), mem.upd.memory.pos], 1)
                if mem is not None else None}

    # ---- recurrent mode ---------------------------------------------------------------------------------
    def step(self, x_t, state):
        """x_t (B, D) at position state.pos -> (y (B, D), the state, updated in place)."""
        check_call(self, x_t, state, rank=2)
        B, i, mem = x_t.shape[0], state.pos, state.mem
        a_t = self._attn_input_step(x_t, state)
        f_t = self.ssm.step(x_t, state.ssm)[0] if self.ssm is not None else None
        cos, sin = self._rope(i, 1, x_t.device, x_t.dtype)
        q = self._step_raw(a_t, state, cos, sin)[0][:, None]  # (B, 1, H, Dh); the token is in the raw ring
        fading = self._fading_step(f_t, cos, sin, state)
        memory = store = None
        if self.memory_size > 0:  # the memory as it stood after the last complete chunk: this block's
            memory = (mem.k[:, None], mem.v[:, None], mem.pos[:, None], mem.gate[:, None] if mem.gate is not None
                      else None)
            store = self._store_step(q, state)
        segs = self._segments(q, Ring(state.k, state.v), fading, memory, store, i)
        o = window_attention_step(q, segs, self.window, chunk=self.chunk, q_start=i, scale=self.scale)
        y = self.o_proj(o.reshape(B, -1))
        if self.ssm_residual:
            y = y + f_t
        if self.memory_size > 0:
            self._remember_step(x_t, a_t, f_t, state)
        state.pos += 1
        return y, state

    def _fading_step(self, f_t, cos, sin, state) -> Ring | None:
        """Write the token's fading key/value into the delay line of 2W; the line as the query reads it."""
        if not self.fading:
            return None
        fk, fv = self._fading_kv(f_t[:, None], cos, sin)
        ring_write(state.fk, state.pos % (2 * self.window), fk[:, 0])
        ring_write(state.fv, state.pos % (2 * self.window), fv[:, 0])
        return Ring(state.fk, state.fv, self.fading_bias)

    def _remember_step(self, x_t, a_t, f_t, state):
        """The token joins its chunk's candidates; at the chunk's end the chunk competes with the memory."""
        n, mem = state.pos % self.chunk, state.mem
        score, gate = self.selection.priority_step(x_t, a_t, f_t, mem, state.pos)
        if gate is not None:
            ring_write(mem.pend_gate, n, gate)
        if n < self.chunk - 1:
            ring_write(mem.pend_score, n, score)
            ring_write(mem.pend_pos, n, state.pos)
            return
        self._merge_step(state, score)

    def _merge_step(self, state, score):
        """The chunk's last token (score (B,)): the chunk's tokens (still in the raw ring) compete with the memory,
        through the same update as the parallel mode over a table of [memory slots | the chunk's tokens]."""
        mem, M, C = state.mem, self.memory_size, self.chunk
        B, dev = score.shape[0], score.device
        slots = mem.pend_pos % self.window  # (B, C) ring slots of the chunk's tokens (the last one just written)
        ring_write(slots, C - 1, state.pos % self.window)
        table = EideticTable(torch.cat([mem.k, gather_rows(state.k, slots)], 1),
                             torch.cat([mem.v, self.selection.values(gather_rows(state.v, slots), mem.pend_gate)], 1),
                             torch.cat([mem.gate, mem.pend_gate.to(mem.gate.dtype)], 1) if mem.gate is not None
                             else None)
        pend = Entries(mem.pend_score[:, :C - 1], mem.pend_pos[:, :C - 1],
                       M + torch.arange(C - 1, device=dev).expand(B, -1))  # the chunk's earlier tokens
        upd = self._update(score[:, None], state.pos, Entries(mem.score, mem.pos, torch.arange(M, device=dev)
                                                               .expand(B, M)), pend, M + C - 1)
        if state.store is not None:
            self._admit(state.store, upd, table, state.pos - C + 1)
        for dst, src in zip((mem.k, mem.v, mem.gate), table.take(upd.memory.src)):
            if dst is not None:
                dst.copy_(src)
        mem.score.copy_(upd.memory.score)
        mem.pos.copy_(upd.memory.pos)
        mem.pend_score.fill_(float("-inf"))
        mem.pend_pos.fill_(-1)

    def init_state(self, batch, device=None, dtype=None, capacity=None) -> BMojoState:
        raw = super().init_state(batch, device, dtype)
        Hk, Dh, W, M, C = self.n_kv_heads, self.head_dim, self.window, self.memory_size, self.chunk
        st = BMojoState(k=raw.k, v=raw.v, conv=raw.conv, pos=0)
        if self.ssm is not None:
            st.ssm = self.ssm.init_state(batch, device, dtype)
        if self.fading:
            st.fk = torch.zeros(batch, 2 * W, Hk, Dh, device=device, dtype=dtype)
            st.fv = torch.zeros(batch, 2 * W, Hk, Dh, device=device, dtype=dtype)
        if M > 0:
            z = torch.zeros(batch, M, Hk, Dh, device=device, dtype=dtype)
            st.mem = MemoryState(k=z, v=z.clone(), score=torch.full((batch, M), float("-inf"), device=device),
                                 pos=torch.full((batch, M), -1, dtype=torch.long, device=device),
                                 pend_score=torch.full((batch, C), float("-inf"), device=device),
                                 pend_pos=torch.full((batch, C), -1, dtype=torch.long, device=device),
                                 **self.selection.init_state(batch, C, self.d_model, device, dtype))
        return st
